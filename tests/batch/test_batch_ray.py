"""The Ray engine on a real local Ray cluster: the same scores as the local engine and as
ModelDistillation.score, with and without logged teacher probabilities, in input order.

The cluster (``ray start --head --block`` on 127.0.0.1, 2 CPUs, its own temp folder and ports)
is started once for this module and stopped in the fixture's teardown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from distilldetect import load_detector  # noqa: E402
from distilldetect.batch import InputError, score_files  # noqa: E402
from distilldetect.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _ray_cluster import RayCluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SRC = str(Path(__file__).resolve().parents[2] / "src")
# No token authentication for this throwaway loopback cluster (so no credential file is used).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


@pytest.fixture(scope="module")
def cluster(factory_dir):
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    path = os.pathsep.join([SRC, str(factory_dir), os.environ.get("PYTHONPATH", "")])
    c = RayCluster(num_cpus=2, env={"PYTHONPATH": path})
    try:
        yield c
    finally:
        leftovers = c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert leftovers == [], f"Ray processes outlived the cluster: {leftovers}"


def _read(path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def test_ray_equals_local_and_score_without_teacher_probs(tmp_path, cluster, detectors, X_digits):
    import ray

    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 1100), (1100, len(X_digits))]):
        np.save(shards / f"shard-{i}.npy", X_digits[a:b])
    kw = dict(drift_window=250, batch_size=64, verbose=False)
    local = score_files(detectors["drift"], shards, tmp_path / "local.parquet", **kw)
    remote = score_files(
        detectors["drift"],
        shards,
        tmp_path / "ray.parquet",
        engine="ray",
        ray_address=cluster.address,
        workers=2,
        **kw,
    )
    assert not ray.is_initialized()  # the call disconnected again
    t_local, t_ray = _read(tmp_path / "local.parquet"), _read(tmp_path / "ray.parquet")
    assert np.array_equal(t_ray["row_id"].to_numpy(), np.arange(len(X_digits)))
    s_ray = t_ray["instance_score"].to_numpy()
    np.testing.assert_allclose(s_ray, t_local["instance_score"].to_numpy(), atol=1e-6)
    ad = load_detector(detectors["md"])
    np.testing.assert_allclose(s_ray, ad.score(X_digits), atol=1e-6)
    assert t_ray["is_adversarial"].to_pylist() == t_local["is_adversarial"].to_pylist()
    d_local = _read(tmp_path / "local.drift.parquet")
    d_ray = _read(tmp_path / "ray.drift.parquet")
    assert d_ray.select(["window_start", "n", "is_drift"]).equals(
        d_local.select(["window_start", "n", "is_drift"])
    )
    np.testing.assert_allclose(d_ray["p_val"].to_numpy(), d_local["p_val"].to_numpy(), atol=1e-9)
    assert (remote.n_rows, remote.n_flagged, remote.n_windows) == (
        local.n_rows,
        local.n_flagged,
        local.n_windows,
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging removed


def test_ray_equals_local_with_logged_teacher_probs(
    tmp_path, cluster, detectors, ad, X_digits, probs_of, make_parquet
):
    X = X_digits[:900]
    probs = probs_of(ad, X)
    ids = [f"req-{i}" for i in range(len(X))]
    path = make_parquet(tmp_path / "x.parquet", X, probs=probs, ids=ids, row_group_size=100)
    kw = dict(teacher_probs="probs", id_column="id", batch_size=50, verbose=False)
    score_files(detectors["md"], path, tmp_path / "local.parquet", **kw)
    score_files(
        detectors["md"],
        path,
        tmp_path / "ray.parquet",
        engine="ray",
        ray_address=cluster.address,
        **kw,
    )
    t_local, t_ray = _read(tmp_path / "local.parquet"), _read(tmp_path / "ray.parquet")
    assert t_ray.column_names == ["row_id", "id", "instance_score", "is_adversarial"]
    assert t_ray["id"].to_pylist() == ids
    s_ray = t_ray["instance_score"].to_numpy()
    np.testing.assert_allclose(s_ray, t_local["instance_score"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(s_ray, ad.score(X, teacher_probs=probs), atol=1e-6)


def test_ray_cli_with_a_black_box_teacher_by_import_path(
    tmp_path, cluster, detectors, X_digits, capsys, monkeypatch
):
    import dd_batch_models

    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # as inside a Ray job: --ray-address auto

    np.save(tmp_path / "x.npy", X_digits[:400])
    out = tmp_path / "s.parquet"
    code = main(
        [
            "score",
            str(detectors["blackbox"]),
            str(tmp_path / "x.npy"),
            str(out),
            "--engine",
            "ray",
            "--ray-address",
            "auto",
            "--workers",
            "2",
            "--model",
            "dd_batch_models:teacher",
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("scored 400 rows with the ray engine")
    ref = load_detector(detectors["blackbox"], model=dd_batch_models.teacher())
    np.testing.assert_allclose(
        _read(out)["instance_score"].to_numpy(), ref.score(X_digits[:400]), atol=1e-6
    )


def test_ray_rows_that_cannot_be_scored(tmp_path, cluster, detectors, X_digits, capsys):
    X = X_digits[:300].copy()
    X[222, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "s.parquet"
    with pytest.raises(InputError, match=r"rows \d+-\d+ of .*must be finite") as info:
        score_files(
            detectors["md"],
            tmp_path / "x.npy",
            out,
            engine="ray",
            ray_address=cluster.address,
            batch_size=50,
            verbose=False,
        )
    first, last = map(int, str(info.value).split()[1].split("-"))
    assert first <= 222 <= last
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ray_without_address_starts_and_stops_its_own_cluster(
    tmp_path, detectors, X_digits, monkeypatch
):
    import ray

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    np.save(tmp_path / "x.npy", X_digits[:200])
    assert not ray.is_initialized()
    summary = score_files(
        detectors["md"], tmp_path / "x.npy", tmp_path / "s.parquet", engine="ray", verbose=False
    )
    assert summary.n_rows == 200 and not ray.is_initialized()
    ad = load_detector(detectors["md"])
    np.testing.assert_allclose(
        _read(tmp_path / "s.parquet")["instance_score"].to_numpy(),
        ad.score(X_digits[:200]),
        atol=1e-6,
    )
    # Ray already initialised by the caller: used as it is, and left running for the caller
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        score_files(
            detectors["md"], tmp_path / "x.npy", tmp_path / "t.parquet", engine="ray", verbose=False
        )
        assert ray.is_initialized()
        with pytest.raises(InputError, match="already initialised"):
            score_files(
                detectors["md"],
                tmp_path / "x.npy",
                tmp_path / "u.parquet",
                engine="ray",
                ray_address="127.0.0.1:6379",
            )
    finally:
        ray.shutdown()
    assert _read(tmp_path / "t.parquet").equals(
        _read(tmp_path / "s.parquet").replace_schema_metadata(
            _read(tmp_path / "t.parquet").schema.metadata
        )
    )
