"""Which drift test and which score detect harmful drift best? (issue 15; VALIDATION split only)

Reads the model outputs saved by ``scripts/tune_drift_pools.py`` (teacher and student
probabilities for 10 000 held-out *training* images, clean and corrupted by the 19 corruption
types at severities 1-5) and measures, for every candidate score x candidate test:

* the level: 1000 clean batches, each against a freshly drawn reference (so the flagged count is
  Binomial(1000, level) for a test whose level holds on average over references);
* detection rates of batches with 10 / 20 % harmful and 50 / 90 % harmless contamination, over
  ``--draws`` reference draws x ``--batches`` batches each, with the spread over draws;
* power by batch size (10, 20, 50, 100) for 100 % / 50 % harmful and 100 % harmless batches.

Every test is one-sided (harm = larger scores) and rank based, so its null distribution does not
depend on the score's distribution: p-values are exact (beta-binomial, hypergeometric), SciPy's
(KS, Mann-Whitney, Anderson-Darling), or Monte-Carlo from simulated exchangeable samples
(higher criticism, Fisher's combination, the D-SOS-style weighted AUC).

Usage: python scripts/tune_drift.py [--pools results/tune-drift/pools.npz] [--scores s0,ens3]
       [--tests ks,mwu,...] [--draws 5] [--batches 200] [--out results/tune-drift/table.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

from distilldetect.losses import sharpen, xent
from distilldetect.metrics import auroc, predictive_entropy

P_VAL = 0.05
N_REF = 1000
BATCH = 100
SEVERITIES = (1, 2, 3, 4, 5)


# ============================================================================ scores
def load_pools(paths: str) -> dict[str, np.ndarray]:
    """Merge several pool files (the same teacher and images; students differ)."""
    out: dict[str, np.ndarray] = {}
    for path in paths.split(","):
        with np.load(path) as f:
            for k in f.files:
                if k in out and not k.startswith("q_") and not np.array_equal(out[k], f[k]):
                    raise ValueError(f"{path}: {k} differs from the first pool file")
                out[k] = f[k]
    return out


def students(pools: dict[str, np.ndarray]) -> list[str]:
    return sorted(k[len("q_eval_") :] for k in pools if k.startswith("q_eval_"))


def _xent(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return xent(sharpen(p.astype(np.float64), 0.5), q)


def score_variants(pools: dict[str, np.ndarray]) -> dict[str, Callable[[str], np.ndarray]]:
    """name -> fn(part) with part 'eval' or 'c<severity>': the per-instance score."""

    def p(part: str) -> np.ndarray:
        return pools["p_eval"] if part == "eval" else pools[f"p_{part}"]

    def q(part: str, s: str) -> np.ndarray:
        return pools[f"q_{part}_{s}"]

    names = students(pools)
    same = [s for s in ("s0", "s1", "s2") if s in names]
    out: dict[str, Callable[[str], np.ndarray]] = {}
    for s in names:
        out[s] = lambda part, s=s: _xent(p(part), q(part, s))
    out["entropy"] = lambda part: predictive_entropy(p(part))
    if "cnn32" in names:  # xent = H(teacher_T) + KL(teacher_T || student): reweight the parts
        for w in (0.0, 0.5, 0.75, 1.5, 2.0, 3.0):

            def mixed(part: str, w: float = w) -> np.ndarray:
                pt = sharpen(p(part).astype(np.float64), 0.5)
                return xent(pt, q(part, "cnn32")) - (1 - w) * predictive_entropy(pt)

            out[f"cnn32_h{int(100 * w)}"] = mixed
    if len(same) >= 2:
        k = len(same)
        out[f"ens{k}_mean"] = lambda part: np.mean([_xent(p(part), q(part, s)) for s in same], 0)
        out[f"ens{k}_max"] = lambda part: np.max([_xent(p(part), q(part, s)) for s in same], 0)
        out[f"ens{k}_meanq"] = lambda part: _xent(p(part), np.mean([q(part, s) for s in same], 0))
    cnn32 = [s for s in ("cnn32", "cnn32b", "cnn32c") if s in names]
    if len(cnn32) >= 2:  # the study's student, several seeds
        k = len(cnn32)
        out[f"cnn32x{k}_mean"] = lambda part: np.mean(
            [_xent(p(part), q(part, s)) for s in cnn32], 0
        )
        out[f"cnn32x{k}_meanq"] = lambda part: _xent(
            p(part), np.mean([q(part, s) for s in cnn32], 0)
        )
    if "s0" in names and "cnn32" in names:
        out["s0_cnn32_mean"] = lambda part: np.mean(
            [_xent(p(part), q(part, s)) for s in ("s0", "cnn32")], 0
        )
    if len(names) > len(same) and len(names) >= 3 and not cnn32[1:]:
        out[f"ens{len(names)}_mean"] = lambda part: np.mean(
            [_xent(p(part), q(part, s)) for s in names], 0
        )

        def disagreement(part: str) -> np.ndarray:
            # xent of the teacher plus the students' spread (mean KL of each to their mean)
            qs = np.stack([q(part, s).astype(np.float64) for s in names])
            qm = qs.mean(0)
            spread = np.mean(
                np.sum(qs * (np.log(np.clip(qs, 1e-7, 1)) - np.log(np.clip(qm, 1e-7, 1))), -1),
                0,
            )
            return _xent(p(part), qm) + spread

        out[f"ens{len(names)}_meanq_spread"] = disagreement

    def pred(part: str) -> np.ndarray:
        return p(part).argmax(1)

    for s in names:
        out[f"{s}_classcal"] = class_calibrated(out[s], pred)
    if "wide" in names and "cnn" in names:
        pair = ["wide", "cnn"]
        out["wide_cnn_mean"] = lambda part: np.mean([_xent(p(part), q(part, s)) for s in pair], 0)
        out["wide_cnn_meanq"] = lambda part: _xent(p(part), np.mean([q(part, s) for s in pair], 0))
    return out


# ============================================================================ tests
def _ref_counts(ref_sorted: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Number of reference values >= each x (x of any shape)."""
    return len(ref_sorted) - np.searchsorted(ref_sorted, x, side="left")


class MonteCarloNull:
    """Null distribution of a rank statistic of the batch against a reference of size m.

    Under H0 the m + n values are exchangeable, so the reference counts of the batch have the
    distribution of the same counts for iid uniform samples: simulated once per batch size.
    """

    def __init__(self, statistic: Callable[[np.ndarray, int], np.ndarray], m: int, sims: int):
        self.statistic, self.m, self.sims = statistic, m, sims
        self._null: dict[int, np.ndarray] = {}

    def null(self, n: int) -> np.ndarray:
        if n not in self._null:
            rng = np.random.default_rng([n, self.m, 12345])
            stats_ = []
            for _ in range(self.sims // 2000):
                ref = np.sort(rng.random((2000, self.m)), axis=1)
                x = rng.random((2000, n))
                counts = np.stack(
                    [
                        self.m - np.searchsorted(r, xi, side="left")
                        for r, xi in zip(ref, x, strict=True)
                    ]
                )
                stats_.append(self.statistic(counts, self.m))
            self._null[n] = np.sort(np.concatenate(stats_))
        return self._null[n]

    def pvalues(self, counts: np.ndarray) -> np.ndarray:
        null = self.null(counts.shape[1])
        t = self.statistic(counts, self.m)
        n_ge = len(null) - np.searchsorted(null, t, side="left")
        return (1 + n_ge) / (1 + len(null))


def hc_statistic(counts: np.ndarray, m: int, alpha0: float = 0.5) -> np.ndarray:
    """Higher criticism (Donoho-Jin) of the conformal p-values (1 + count) / (m + 1)."""
    u = np.clip(np.sort((1 + counts) / (m + 1), axis=1), None, m / (m + 1))
    n = u.shape[1]
    i = np.arange(1, n + 1) / n
    hc = np.sqrt(n) * (i - u) / np.sqrt(u * (1 - u))
    k = max(1, int(alpha0 * n))
    return hc[:, :k].max(axis=1)


def fisher_statistic(counts: np.ndarray, m: int) -> np.ndarray:
    return -np.log((1 + counts) / (m + 1)).sum(axis=1)


def wauc_statistic(power: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """D-SOS-style weighted AUC (Kamulete 2022): thresholds weighted by F_ref(t)^2, i.e. a
    linear rank statistic sum_j v_j^(power) with v_j the reference CDF at the batch value."""

    def statistic(counts: np.ndarray, m: int) -> np.ndarray:
        v = 1 - counts / m
        return (v**power).sum(axis=1)

    return statistic


def make_tests(m: int, sims: int) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """name -> fn(ref_sorted (m,), batches (B, n)) -> p-values (B,)."""
    tests: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}

    def ks(ref, X):
        R = np.broadcast_to(ref, (len(X), len(ref)))
        return stats.ks_2samp(R, X, alternative="greater", method="asymp", axis=1).pvalue

    def mwu(ref, X):
        R = np.broadcast_to(ref, (len(X), len(ref)))
        return stats.mannwhitneyu(X, R, alternative="greater", axis=1).pvalue

    def ad(ref, X):
        out = np.empty(len(X))
        for b, x in enumerate(X):
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[b] = stats.anderson_ksamp([ref, x]).pvalue
        return out

    tests["ks"], tests["mwu"], tests["ad"] = ks, mwu, ad

    def exceed(q: float):
        def test(ref, X):
            k = max(1, int(np.ceil(len(ref) * (1 - q))))  # threshold: the k-th largest ref
            thr = ref[len(ref) - k]
            x = (X > thr).sum(axis=1)
            n = X.shape[1]
            return stats.betabinom.sf(x - 1, n, k, len(ref) - k + 1)

        return test

    for q in (0.8, 0.9, 0.95, 0.98, 0.99):
        tests[f"count{int(round(100 * q))}"] = exceed(q)

    def fisher_pooled(q: float):
        def test(ref, X):
            n, mm = X.shape[1], len(ref)
            K = max(1, int(np.ceil((mm + n) * (1 - q))))
            pooled = np.concatenate([np.broadcast_to(ref, (len(X), mm)), X], axis=1)
            thr = -np.partition(-pooled, K - 1, axis=1)[:, K - 1]
            x = (X >= thr[:, None]).sum(axis=1)
            return stats.hypergeom.sf(x - 1, mm + n, K, n)

        return test

    tests["hyper95"] = fisher_pooled(0.95)

    for name, statistic in (
        ("hc", hc_statistic),
        ("fisher", fisher_statistic),
        ("wauc2", wauc_statistic(2)),
        ("wauc3", wauc_statistic(3)),
        ("wauc4", wauc_statistic(4)),
        ("wauc6", wauc_statistic(6)),
        ("wauc8", wauc_statistic(8)),
        ("wauc10", wauc_statistic(10)),
        ("wauc12", wauc_statistic(12)),
        ("wauc16", wauc_statistic(16)),
        ("wauc20", wauc_statistic(20)),
        ("wauc30", wauc_statistic(30)),
        ("tail_log", lambda counts, m: -np.log1p(-(1 - counts / m) * m / (m + 1)).sum(axis=1)),
    ):
        mc = MonteCarloNull(statistic, m, sims)
        tests[name] = lambda ref, X, mc=mc: mc.pvalues(_ref_counts(ref, X))

    def multi(ref, X):  # min p of count90/95/99, calibrated by Monte Carlo on the counts
        return mc_multi.pvalues(_ref_counts(ref, X))

    def multi_stat(counts, mm, quantiles=(0.9, 0.95, 0.99)):
        n = counts.shape[1]
        ps = []
        for q in quantiles:
            k = max(1, int(np.ceil(mm * (1 - q))))
            x = (counts < k).sum(axis=1)  # batch values above the k-th largest ref
            ps.append(stats.betabinom.sf(x - 1, n, k, mm - k + 1))
        return -np.min(ps, axis=0)

    mc_multi = MonteCarloNull(multi_stat, m, sims)
    tests["count_multi"] = multi

    def multi_hi_stat(counts, mm):
        return multi_stat(counts, mm, (0.95, 0.98, 0.99))

    mc_multi_hi = MonteCarloNull(multi_hi_stat, m, sims)
    tests["count_multi_hi"] = lambda ref, X: mc_multi_hi.pvalues(_ref_counts(ref, X))
    return tests


# ============================================================================ experiment
CALIBRATION = np.zeros(0, int)  # evaluation rows held out to calibrate scores (--calib)


def calibration_rows(n_eval: int, n: int) -> np.ndarray:
    return np.sort(np.random.default_rng(777).permutation(n_eval)[:n])


def class_calibrated(
    score: Callable[[str], np.ndarray], pred: Callable[[str], np.ndarray]
) -> Callable[[str], np.ndarray]:
    """Per-class calibration: a score becomes its position among the calibration rows' scores
    of the same teacher-predicted class (an empirical CDF per class, ties broken by the raw
    score). Needs --calib (the calibration rows are then excluded from every batch)."""

    def fn(part: str) -> np.ndarray:
        if not len(CALIBRATION):
            raise SystemExit("class-calibrated scores need --calib N")
        cal_s, cal_c = score("eval")[CALIBRATION], pred("eval")[CALIBRATION]
        s, c = score(part), pred(part)
        out = np.empty(len(s))
        for k in np.unique(c):
            ref = np.sort(cal_s[cal_c == k])
            m = c == k
            out[m] = (np.searchsorted(ref, s[m]) + 1e-6 * np.tanh(s[m])) / max(len(ref), 1)
        return out

    return fn


def pools_for_draw(clean_ok, rows, y_rows, correct, rng, n_eval):
    free = np.setdiff1d(np.arange(n_eval), CALIBRATION)
    ref = rng.choice(free, N_REF, replace=False)
    in_ref = np.zeros(n_eval, bool)
    in_ref[ref] = True
    in_ref[CALIBRATION] = True  # neither in batches nor as corrupted sources
    return ref, np.flatnonzero(~in_ref), ~in_ref[rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="results/tune-drift/pools.npz")
    parser.add_argument("--scores", default=None, help="comma-separated; default all")
    parser.add_argument("--tests", default=None, help="comma-separated; default all")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--level-batches", type=int, default=1000)
    parser.add_argument("--sims", type=int, default=20000)
    parser.add_argument("--sizes", default="10,20,50,100")
    parser.add_argument("--out", default="results/tune-drift/table.json")
    parser.add_argument("--calib", type=int, default=0, help="rows held out for calibration")
    args = parser.parse_args()
    global CALIBRATION

    pools = load_pools(args.pools)
    variants = score_variants(pools)
    if args.scores:
        variants = {k: variants[k] for k in args.scores.split(",")}
    elif not args.calib:  # class-calibrated scores need calibration rows
        variants = {k: v for k, v in variants.items() if not k.endswith("_classcal")}
    tests = make_tests(N_REF, args.sims)
    if args.tests:
        tests = {k: tests[k] for k in args.tests.split(",")}
    sizes = [int(s) for s in args.sizes.split(",")]

    y, p_eval, rows = pools["y_eval"], pools["p_eval"], pools["rows"]
    n_eval = len(y)
    if args.calib:
        CALIBRATION = calibration_rows(n_eval, args.calib)
    clean_ok = p_eval.argmax(1) == y
    flat_rows = rows.ravel()
    table: dict = {}
    for sname, fn in variants.items():
        t0 = time.perf_counter()
        clean = fn("eval")
        entry: dict = {"severities": {}}
        # level: 1000 clean batches, each against a fresh reference draw
        rng = np.random.default_rng(0)
        level = {t: 0 for t in tests}
        lvl_batches = []
        refs = []
        free = np.setdiff1d(np.arange(n_eval), CALIBRATION)
        for _ in range(args.level_batches):
            perm = rng.permutation(free)
            refs.append(np.sort(clean[perm[:N_REF]]))
            lvl_batches.append(clean[perm[N_REF : N_REF + BATCH]])
        refs_a, lvl_a = np.asarray(refs), np.asarray(lvl_batches)
        for t, test in tests.items():
            # group by reference: one batch per reference
            ps = np.array([test(r, b[None])[0] for r, b in zip(refs_a, lvl_a, strict=True)])
            level[t] = int((ps < P_VAL).sum())
        entry["level"] = {
            t: {
                "k": k,
                "n": args.level_batches,
                "rate": k / args.level_batches,
                "ci": list(stats.binomtest(k, args.level_batches).proportion_ci()),
            }
            for t, k in level.items()
        }
        for sev in SEVERITIES:
            scores = fn(f"c{sev}")
            correct = pools[f"p_c{sev}"].argmax(1) == y[flat_rows]
            harmful = clean_ok[flat_rows] & ~correct
            harmless = clean_ok[flat_rows] & correct
            sev_entry: dict = {
                "auroc": auroc(scores[harmful], scores[harmless]),
                "n_harmful": int(harmful.sum()),
                "n_harmless": int(harmless.sum()),
            }
            cells = {
                ("harmful", 0.1, BATCH): [],
                ("harmful", 0.2, BATCH): [],
                ("harmless", 0.5, BATCH): [],
                ("harmless", 0.9, BATCH): [],
            }
            for n in sizes:
                cells.setdefault(("harmful", 1.0, n), [])
                cells.setdefault(("harmful", 0.5, n), [])
                cells.setdefault(("harmless", 1.0, n), [])
            rates = {t: {c: [] for c in cells} for t in tests}
            drng = np.random.default_rng([sev, 99])
            for _d in range(args.draws):
                ref_idx, pool_idx, allowed = pools_for_draw(
                    None, flat_rows, None, None, drng, n_eval
                )
                ref = np.sort(clean[ref_idx])
                src = {
                    "harmful": np.flatnonzero(harmful & allowed),
                    "harmless": np.flatnonzero(harmless & allowed),
                }
                for kind, frac, n in cells:
                    k_bad = int(round(frac * n))
                    good = np.stack(
                        [
                            drng.choice(pool_idx, n - k_bad, replace=False)
                            for _ in range(args.batches)
                        ]
                    )
                    with_repl = len(src[kind]) < k_bad
                    bad = np.stack(
                        [
                            drng.choice(src[kind], k_bad, replace=with_repl)
                            for _ in range(args.batches)
                        ]
                    ).reshape(args.batches, k_bad)
                    X = np.concatenate([clean[good], scores[bad]], axis=1)
                    for t, test in tests.items():
                        rates[t][(kind, frac, n)].append(float((test(ref, X) < P_VAL).mean()))
            sev_entry["tests"] = {
                t: {
                    f"{k}_{int(100 * f)}_n{n}": {"mean": float(np.mean(v)), "std": float(np.std(v))}
                    for (k, f, n), v in r.items()
                }
                for t, r in rates.items()
            }
            entry["severities"][str(sev)] = sev_entry
        table[sname] = entry
        print(f"{sname}: {time.perf_counter() - t0:.0f} s", flush=True)
        print_summary(sname, entry, tests)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))


def print_summary(sname: str, entry: dict, tests) -> None:
    sev = entry["severities"]
    aucs = " / ".join(f"{sev[s]['auroc']:.3f}" for s in sorted(sev))
    print(f"  AUROC {aucs}")
    for t in tests:
        lv = entry["level"][t]
        cols = []
        for key in (
            "harmful_10_n100",
            "harmful_20_n100",
            "harmless_50_n100",
            "harmless_90_n100",
            "harmful_100_n10",
            "harmful_50_n10",
            "harmless_100_n10",
        ):
            cols.append("/".join(f"{sev[s]['tests'][t][key]['mean']:.2f}" for s in sorted(sev)))
        print(
            f"  {t:12s} level {lv['rate']:.3f} | h10 {cols[0]} | h20 {cols[1]} | "
            f"q50 {cols[2]} | q90 {cols[3]} | n10: h100 {cols[4]} h50 {cols[5]} q100 {cols[6]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
