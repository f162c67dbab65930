"""save_detector / load_detector: round trips in fresh processes, hostile files, atomic saves."""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import distilldetect
from distilldetect import KSDrift, ModelDistillation, files, load_detector, save_detector, saving
from distilldetect.backends.torch.models import mlp
from distilldetect.files import manifest_checksum
from distilldetect.saving import DetectorFormatError

SRC = Path(distilldetect.__file__).parent

# A torch module outside the model zoo (with tied weights), importable by a child process.
CUSTOM_NETS = '''
import torch


class TiedNet(torch.nn.Module):
    """8x8 images -> 10 class probabilities; encoder and decoder share one weight matrix."""

    def __init__(self, hidden=12):
        super().__init__()
        self.encoder = torch.nn.Linear(64, hidden)
        self.decoder = torch.nn.Linear(hidden, 64)
        self.decoder.weight = torch.nn.Parameter(self.encoder.weight.t())
        self.head = torch.nn.Linear(hidden, 10)
        self.norm = torch.nn.BatchNorm1d(hidden)

    def forward(self, x):
        h = torch.tanh(self.norm(self.encoder(x.flatten(1))))
        return torch.softmax(self.head(h), dim=-1)


class SharedNet(torch.nn.Module):
    """Two names for one Linear module: its tensors appear twice in the state dict."""

    def __init__(self, hidden=12):
        super().__init__()
        self.body = torch.nn.Linear(64, hidden)
        self.alias = self.body
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        return torch.softmax(self.head(torch.relu(self.body(x.flatten(1)))), dim=-1)
'''


# ------------------------------------------------------------------------------- helpers
def import_custom(tmp_path: Path):
    path = tmp_path / "custom_nets.py"
    path.write_text(CUSTOM_NETS)
    spec = importlib.util.spec_from_file_location(f"custom_nets_{tmp_path.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_fresh(tmp_path: Path, code: str) -> None:
    """Run ``code`` in a fresh Python process (cwd and import path: ``tmp_path``)."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"


def settings_of(ad: ModelDistillation) -> dict:
    return {
        "threshold": ad.threshold,
        "temperature": ad.temperature,
        "loss_type": ad.loss_type,
        "input_shape": None if ad.input_shape is None else list(ad.input_shape),
        "history": ad.history,
        "meta": ad.meta,
        "teacher_framework": ad.teacher_framework,
        "student_framework": ad.student_framework,
    }


def data_of(folder: Path) -> Path:
    """The data folder that a saved detector's config.json names."""
    return folder / json.loads((folder / "config.json").read_text())["data"]


def rewrite_config(folder: Path, edit=None, rehash: bool = False, reseal: bool = True) -> None:
    """Edit config.json (``edit(config)``); ``rehash`` recomputes the recorded file checksums,
    ``reseal`` config.json's own checksum (as an attacker who rewrites every hash would)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    data = folder / config["data"]
    if edit is not None:
        edit(config)
    if rehash:
        for item in config["files"]:
            raw = (data / item["file"]).read_bytes()
            item["sha256"] = hashlib.sha256(raw).hexdigest()
            item["bytes"] = len(raw)
    if reseal:
        config["checksum"] = manifest_checksum(config)
    path.write_text(json.dumps(config))


MODELS = ["detector", "config"]  # where the model references live in config.json


def model_entry(config: dict, name: str) -> dict:
    return config["detector"]["config"][name]["$model"]["entry"]


class Plant:
    """Unpickling this creates the file ``marker``: the planted pickle payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_pickle(tmp_path: Path, marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled (checked live on a probe path first)."""
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(Plant(probe))).close()  # the payload really runs code
    assert probe.exists()
    return pickle.dumps(Plant(marker))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fitted_once(digits, digits_teacher):
    """A fitted ModelDistillation on zoo models, xent, sharpened, with a threshold."""
    X_train, _, X_test, _ = digits
    torch.manual_seed(3)
    ad = ModelDistillation(
        distilled_model=mlp((8, 8), 10, (16,)),
        model=copy.deepcopy(digits_teacher),
        loss_type="xent",
        temperature=0.5,
        data_type="image",
    )
    ad.fit(X_train, epochs=3, verbose=False, seed=0, learning_rate=1e-2)
    ad.infer_threshold(X_test, threshold_perc=90)
    return ad


@pytest.fixture
def fitted(fitted_once):
    """A private copy of the fitted detector (tests change it)."""
    return copy.deepcopy(fitted_once)


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "det"
    save_detector(fitted, path)
    return path


@pytest.fixture
def sklearn_teacher(digits):
    from sklearn.linear_model import LogisticRegression

    X_train, y_train, _, _ = digits
    return LogisticRegression(max_iter=300).fit(X_train.reshape(len(X_train), -1), y_train)


def flat_proba(clf):
    return lambda x: clf.predict_proba(x.reshape(len(x), -1))


# ======================================================================== round trips
def test_zoo_round_trip_in_fresh_process(fitted, saved, digits, tmp_path):
    _, _, X_test, _ = digits
    np.save(tmp_path / "X.npy", X_test)
    run_fresh(
        tmp_path,
        """
        import json
        import numpy as np
        from distilldetect import load_detector

        ad = load_detector("det")  # zoo models: rebuilt from the folder alone
        X = np.load("X.npy", allow_pickle=False)
        np.save("scores.npy", ad.score(X))
        np.save("preds.npy", ad.predict(X)["data"]["is_adversarial"])
        json.dump({
            "threshold": ad.threshold, "temperature": ad.temperature,
            "loss_type": ad.loss_type, "input_shape": list(ad.input_shape),
            "history": ad.history, "meta": ad.meta,
            "teacher_framework": ad.teacher_framework,
            "student_framework": ad.student_framework,
            "teacher_frozen": [n for n, p in ad.model.named_parameters() if not p.requires_grad],
            "builders": [ad.model.builder_config, ad.distilled_model.builder_config],
        }, open("settings.json", "w"))
        """,
    )
    scores = np.load(tmp_path / "scores.npy", allow_pickle=False)
    assert np.array_equal(scores, fitted.score(X_test))
    assert np.array_equal(
        np.load(tmp_path / "preds.npy", allow_pickle=False),
        fitted.predict(X_test)["data"]["is_adversarial"],
    )
    child = json.loads((tmp_path / "settings.json").read_text())
    assert child.pop("teacher_frozen") == []
    assert child.pop("builders") == [
        json.loads(json.dumps(fitted.model.builder_config)),
        json.loads(json.dumps(fitted.distilled_model.builder_config)),
    ]
    assert child == settings_of(fitted)
    assert child["meta"]["data_type"] == "image"


def test_config_format(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "distilldetect-detector"
    assert config["format_version"] == saving.FORMAT_VERSION == 2
    assert config["library_version"] == distilldetect.__version__
    assert config["detector"]["class"] == "ModelDistillation"
    assert config["checksum"] == manifest_checksum(config)
    data = saved / config["data"]
    assert {item["file"] for item in config["files"]} == {
        "model.safetensors",
        "distilled_model.safetensors",
    }
    for item in config["files"]:
        raw = (data / item["file"]).read_bytes()
        assert item == {
            "file": item["file"],
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
        }
    assert model_entry(config, "model")["architecture"]["kind"] == "zoo"
    assert sorted(os.listdir(saved)) == [".lock", "config.json", config["data"]]
    assert sorted(os.listdir(data)) == ["distilled_model.safetensors", "model.safetensors"]


def test_custom_modules_round_trip_in_fresh_process(digits, tmp_path):
    custom = import_custom(tmp_path)
    X_train, _, X_test, _ = digits
    torch.manual_seed(0)
    teacher, student = custom.SharedNet(), custom.TiedNet()
    ad = ModelDistillation(distilled_model=student, model=teacher)
    ad.fit(X_train, epochs=2, verbose=False, seed=0)
    ad.infer_threshold(X_train)
    save_detector(ad, tmp_path / "det")

    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert model_entry(config, "distilled_model")["architecture"]["kind"] == "none"
    assert model_entry(config, "distilled_model")["aliases"] == {}  # a transposed view: own tensor
    assert model_entry(config, "model")["aliases"] == {
        "alias.weight": "body.weight",
        "alias.bias": "body.bias",
    }

    with pytest.raises(ValueError, match=r"distilled_model=") as err:
        load_detector(tmp_path / "det")
    assert "distilled_model.safetensors" in str(err.value)
    with pytest.raises(ValueError, match=r"load_detector\(\.\.\., model=module\)"):
        load_detector(tmp_path / "det", distilled_model=custom.TiedNet())

    np.save(tmp_path / "X.npy", X_test)
    run_fresh(
        tmp_path,
        """
        import json
        import numpy as np
        import torch
        from custom_nets import SharedNet, TiedNet
        from distilldetect import load_detector

        torch.manual_seed(123)  # other initial weights: all must come from the folder
        student, teacher = TiedNet(), SharedNet()
        ad = load_detector("det", model=teacher, distilled_model=student)
        assert ad.model is teacher and ad.distilled_model is student
        assert student.decoder.weight.data_ptr() == student.encoder.weight.data_ptr()
        np.save("scores.npy", ad.score(np.load("X.npy", allow_pickle=False)))
        json.dump({"threshold": ad.threshold, "meta": ad.meta}, open("out.json", "w"))
        """,
    )
    assert np.array_equal(np.load(tmp_path / "scores.npy", allow_pickle=False), ad.score(X_test))
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"threshold": ad.threshold, "meta": ad.meta}


def test_black_box_teacher_round_trip_in_fresh_process(digits, sklearn_teacher, tmp_path):
    X_train, _, X_test, _ = digits
    torch.manual_seed(0)
    ad = ModelDistillation(
        distilled_model=mlp((8, 8), 10, (16,)), model=flat_proba(sklearn_teacher)
    )
    ad.fit(X_train, epochs=2, verbose=False, seed=0)
    ad.infer_threshold(X_train, 95)
    save_detector(ad, tmp_path / "det")
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert model_entry(config, "model")["framework"] == "callable"
    assert model_entry(config, "model")["files"] == []
    assert os.listdir(data_of(tmp_path / "det")) == ["distilled_model.safetensors"]

    with pytest.raises(ValueError, match=r"black-box model .*model=") as err:
        load_detector(tmp_path / "det")
    assert "cannot be saved" in str(err.value)

    np.save(tmp_path / "X.npy", X_test)
    run_fresh(
        tmp_path,
        """
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from distilldetect import load_detector

        data = load_digits()  # the conftest digits split, rebuilt here
        X = (data.images / 16.0).astype(np.float32)
        order = np.random.default_rng(0).permutation(len(X))
        X, y = X[order][:1200], data.target.astype(np.int64)[order][:1200]
        clf = LogisticRegression(max_iter=300).fit(X.reshape(len(X), -1), y)
        ad = load_detector("det", model=lambda x: clf.predict_proba(x.reshape(len(x), -1)))
        np.save("scores.npy", ad.score(np.load("X.npy", allow_pickle=False)))
        """,
    )
    assert np.array_equal(np.load(tmp_path / "scores.npy", allow_pickle=False), ad.score(X_test))


def test_lambda_teacher_and_any_callable_on_load(digits, tmp_path):
    X_train, _, X_test, _ = digits
    rng = np.random.default_rng(0)
    W = rng.normal(size=(64, 10))

    def teacher(x):
        z = x.reshape(len(x), -1) @ W
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    torch.manual_seed(0)
    ad = ModelDistillation(distilled_model=mlp((8, 8), 10, (8,)), model=lambda x: teacher(x))
    ad.fit(X_train, epochs=1, verbose=False, seed=0)
    save_detector(ad, tmp_path / "det")
    loaded = load_detector(tmp_path / "det", model=teacher)
    assert np.array_equal(loaded.score(X_test), ad.score(X_test))
    assert loaded.meta == ad.meta


def test_ksdrift_round_trip_in_fresh_process(digits, tmp_path):
    rng = np.random.default_rng(0)
    x_ref = rng.normal(size=(300, 3)).astype(np.float32)
    batches = [rng.normal(loc=0.1 * i, size=(60, 3)).astype(np.float32) for i in range(3)]
    cd = KSDrift(
        x_ref,
        p_val=0.01,
        update_x_ref={"reservoir_sampling": 250},
        correction="fdr",
        alternative="less",
        data_type="tabular",
        seed=7,
    )
    cd.predict(batches[0])  # the reservoir and its random state move on
    save_detector(cd, tmp_path / "cd")
    np.save(tmp_path / "b1.npy", batches[1])
    np.save(tmp_path / "b2.npy", batches[2])
    run_fresh(
        tmp_path,
        """
        import json
        import numpy as np
        from distilldetect import load_detector

        cd = load_detector("cd")
        out = {"n_before": cd.n, "settings": [cd.p_val, cd.correction, cd.alternative,
               cd.n_features, list(cd.input_shape), cd.update_x_ref, cd.seed,
               cd.x_ref_preprocessed, cd.preprocess_at_init], "meta": cd.meta}
        for name in ("b1", "b2"):
            res = cd.predict(np.load(name + ".npy", allow_pickle=False), drift_type="feature")
            np.save(name + "_p.npy", res["data"]["p_val"])
        np.save("x_ref.npy", cd.x_ref)
        out["n_after"] = cd.n
        json.dump(out, open("out.json", "w"))
        """,
    )
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["n_before"] == cd.n
    assert out["meta"] == cd.meta
    assert out["settings"] == [
        cd.p_val,
        cd.correction,
        cd.alternative,
        cd.n_features,
        list(cd.input_shape),
        cd.update_x_ref,
        cd.seed,
        cd.x_ref_preprocessed,
        cd.preprocess_at_init,
    ]
    for name, batch in (("b1", batches[1]), ("b2", batches[2])):
        p = cd.predict(batch, drift_type="feature")["data"]["p_val"]
        assert np.array_equal(np.load(tmp_path / f"{name}_p.npy", allow_pickle=False), p)
    assert np.array_equal(np.load(tmp_path / "x_ref.npy", allow_pickle=False), cd.x_ref)
    assert out["n_after"] == cd.n


def test_ksdrift_with_model_distillation_score_in_fresh_process(fitted, digits, tmp_path):
    _, _, X_test, _ = digits
    cd = fitted.drift_detector(X_test[:200], p_val=0.05, batch_size=64, update_x_ref={"last": 250})
    save_detector(cd, tmp_path / "cd")
    config = json.loads((tmp_path / "cd" / "config.json").read_text())
    score = config["detector"]["config"]["preprocess_fn"]["$score"]
    assert score["keywords"] == {"batch_size": 64}
    assert score["detector"]["class"] == "ModelDistillation"
    assert "preprocess_fn/distilled_model.safetensors" in {i["file"] for i in config["files"]}

    batch = X_test[200:300] + np.float32(0.3) * np.random.default_rng(1).random(
        X_test[200:300].shape, dtype=np.float32
    )
    np.save(tmp_path / "batch.npy", batch)
    run_fresh(
        tmp_path,
        """
        import functools
        import numpy as np
        from distilldetect import load_detector

        cd = load_detector("cd")
        assert isinstance(cd.preprocess_fn, functools.partial)
        assert cd.preprocess_fn.keywords == {"batch_size": 64}
        res = cd.predict(np.load("batch.npy", allow_pickle=False))
        np.save("p.npy", res["data"]["p_val"])
        np.save("x_ref.npy", cd.x_ref)
        """,
    )
    p = cd.predict(batch)["data"]["p_val"]
    assert np.array_equal(np.load(tmp_path / "p.npy", allow_pickle=False), p)
    assert np.array_equal(np.load(tmp_path / "x_ref.npy", allow_pickle=False), cd.x_ref)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"preprocess_at_init": False},
        {"x_ref_preprocessed": True},
    ],
)
def test_ksdrift_preprocessing_variants_round_trip(fitted, digits, tmp_path, kwargs):
    _, _, X_test, _ = digits
    x_ref = X_test[:150]
    if kwargs.get("x_ref_preprocessed"):
        x_ref = fitted.score(x_ref)
    cd = KSDrift(x_ref, preprocess_fn=fitted.score, alternative="greater", **kwargs)
    save_detector(cd, tmp_path / "cd")
    loaded = load_detector(tmp_path / "cd")
    assert loaded.preprocess_fn.__func__ is ModelDistillation.score
    for attr in ("p_val", "preprocess_at_init", "n_features", "n", "_ref_is_preprocessed"):
        assert getattr(loaded, attr) == getattr(cd, attr)
    assert loaded.get_config()["x_ref_preprocessed"] == cd.get_config()["x_ref_preprocessed"]
    assert loaded.input_shape == cd.input_shape
    assert np.array_equal(loaded.x_ref, cd.x_ref)
    assert np.array_equal(loaded.score(X_test[150:250])[0], cd.score(X_test[150:250])[0])


def test_ksdrift_preprocess_with_custom_student_passes_kwargs(digits, tmp_path):
    custom = import_custom(tmp_path)
    X_train, _, X_test, _ = digits
    torch.manual_seed(0)
    ad = ModelDistillation(distilled_model=custom.TiedNet(), model=mlp((8, 8), 10, (8,)))
    ad.fit(X_train, epochs=1, verbose=False, seed=0)
    cd = ad.drift_detector(X_test[:100])
    save_detector(cd, tmp_path / "cd")
    with pytest.raises(ValueError, match="distilled_model="):
        load_detector(tmp_path / "cd")
    loaded = load_detector(tmp_path / "cd", distilled_model=custom.TiedNet())
    assert np.array_equal(loaded.score(X_test[100:200])[0], cd.score(X_test[100:200])[0])


def test_ksdrift_without_models_rejects_model_kwargs(tmp_path):
    cd = KSDrift(np.random.default_rng(0).normal(size=(50, 2)))
    save_detector(cd, tmp_path / "cd")
    with pytest.raises(ValueError, match=r"model= given"):
        load_detector(tmp_path / "cd", model=lambda x: x)


@pytest.mark.parametrize(
    "make_fn",
    [
        lambda ad: lambda x: ad.score(x),
        lambda ad: functools.partial(ad.score, teacher_probs=None),
        lambda ad: functools.partial(ad.score, 64),
        lambda ad: ad.predict,
        lambda ad: np.sqrt,
    ],
    ids=["lambda", "other-keyword", "positional", "other-method", "ufunc"],
)
def test_ksdrift_unsavable_preprocess_fn(fitted, digits, tmp_path, make_fn):
    _, _, X_test, _ = digits
    fn = make_fn(fitted)
    cd = KSDrift(X_test[:40], preprocess_fn=fitted.score)
    cd.preprocess_fn = fn  # as if given at construction (some would not even run)
    with pytest.raises(ValueError, match="cannot be saved") as err:
        save_detector(cd, tmp_path / "cd")
    assert "preprocess_fn" in str(err.value)
    assert os.listdir(tmp_path) == []  # nothing written, not even a temporary folder


# ====================================================================== hostile folders
def _flip_byte(folder: Path) -> None:
    path = data_of(folder) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    path = data_of(folder) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("mutate", "rehash", "pattern"),
    [
        (_flip_byte, False, r"model\.safetensors does not match its recorded SHA-256"),
        (_truncate, False, r"model\.safetensors has \d+ bytes .* truncated"),
        (_truncate, True, r"model\.safetensors is not a valid safetensors file"),
        (
            lambda f: (data_of(f) / "model.safetensors").unlink(),
            False,
            r"model\.safetensors is missing",
        ),
    ],
    ids=["modified", "truncated", "truncated-and-rehashed", "missing"],
)
def test_damaged_weights_name_the_file(saved, mutate, rehash, pattern):
    mutate(saved)
    if rehash:
        rewrite_config(saved, rehash=True)
    with pytest.raises(DetectorFormatError, match=pattern):
        load_detector(saved)


@pytest.mark.parametrize("rehash", [False, True], ids=["checksum-stale", "checksum-forged"])
@pytest.mark.parametrize("target", ["model.safetensors", "distilled_model.safetensors"])
def test_planted_pickle_weights_never_run(saved, tmp_path, rehash, target):
    marker = tmp_path / "pwned"
    (data_of(saved) / target).write_bytes(planted_pickle(tmp_path, marker))
    if rehash:  # the attacker also edits config.json
        rewrite_config(saved, rehash=True)
    with pytest.raises(DetectorFormatError) as err:
        load_detector(saved)
    assert target in str(err.value)
    assert not marker.exists()


def test_planted_torch_save_weights_never_run(saved, tmp_path):
    marker = tmp_path / "pwned"
    planted_pickle(tmp_path, marker)
    torch.save({"net.0.weight": Plant(marker)}, data_of(saved) / "model.safetensors")
    rewrite_config(saved, rehash=True)
    with pytest.raises(DetectorFormatError, match=r"model\.safetensors is not a valid"):
        load_detector(saved)
    assert not marker.exists()


def test_planted_pickle_config_never_runs(saved, tmp_path):
    marker = tmp_path / "pwned"
    (saved / "config.json").write_bytes(planted_pickle(tmp_path, marker))
    with pytest.raises(DetectorFormatError, match=r"config\.json is not a valid JSON"):
        load_detector(saved)
    assert not marker.exists()


def test_planted_pickle_reference_never_runs(tmp_path):
    cd = KSDrift(np.random.default_rng(0).normal(size=(50, 2)))
    save_detector(cd, tmp_path / "cd")
    marker = tmp_path / "pwned"
    (data_of(tmp_path / "cd") / "x_ref.safetensors").write_bytes(planted_pickle(tmp_path, marker))
    rewrite_config(tmp_path / "cd", rehash=True)
    with pytest.raises(DetectorFormatError, match=r"x_ref\.safetensors is not a valid"):
        load_detector(tmp_path / "cd")
    assert not marker.exists()


def test_hostile_alibi_detect_pickle_folder_is_refused(tmp_path, fitted):
    marker = tmp_path / "pwned"
    folder = tmp_path / "alibi"
    folder.mkdir()
    (folder / "meta.dill").write_bytes(planted_pickle(tmp_path, marker))
    with pytest.raises(DetectorFormatError, match="refusing to load this pickle"):
        load_detector(folder)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"not part of a saved detector: meta\.dill"):
        save_detector(fitted, folder)  # not ours: never deleted
    assert (folder / "meta.dill").exists()


def _set(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


M = ["detector", "config", "model", "$model", "entry"]


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_set(["format_version"], 3), r"saved by a newer distilldetect .*Upgrade distilldetect"),
        (_set(["format_version"], "1"), r"'format_version' must be an integer"),
        (_set(["format"], "alibi"), r"not a distilldetect detector config"),
        (_set(["detector", "class"], "Evil"), r"unknown detector 'Evil'"),
        (_set(["surprise"], 1), r"unknown keys \['surprise'\]"),
        (_set(["detector"], KeyError), r"missing keys \['detector'\]"),
        (_set(["detector", "config", "threshold"], "high"), r"settings are invalid: threshold"),
        (_set(["detector", "config", "temperature"], 0.0), r"temperature must be a finite number"),
        (_set(["detector", "config", "extra"], 1), r"unknown keys \['extra'\]"),
        (_set(["files", 0, "file"], "../det/model.safetensors"), r"not an allowed file name"),
        (_set(["files", 0, "file"], "/etc/passwd"), r"not an allowed file name"),
        (_set([*M, "framework"], "jax"), r"unknown framework 'jax'"),
        (_set([*M, "architecture", "builder"], "os.system"), r"cannot rebuild model: .*os\.system"),
        (_set([*M, "architecture", "kwargs", "hidden"], [10**7]), r"asks for more units than"),
        (
            _set([*M, "tensors", "net.0.bias", "shape"], [3]),
            r"model\.safetensors does not hold the tensors config\.json lists",
        ),
        (_set([*M, "files"], ["other.bin"]), r"'other.bin' is not listed"),
    ],
    ids=[
        "newer-version",
        "version-type",
        "format",
        "detector",
        "unknown-key",
        "missing-key",
        "bad-setting",
        "cannot-score",
        "unknown-setting",
        "traversal",
        "absolute",
        "framework",
        "builder",
        "huge-kwargs",
        "tensor-shape",
        "unlisted-file",
    ],
)
def test_invalid_config_is_a_clear_error(saved, edit, pattern):
    rewrite_config(saved, edit)
    with pytest.raises(DetectorFormatError, match=pattern) as err:
        load_detector(saved)
    assert "config.json" in str(err.value) or "safetensors" in str(err.value)


def test_hand_edited_config_is_refused(saved, fitted):
    """A threshold edited by hand (x10) is refused: config.json checks its own checksum."""
    rewrite_config(
        saved, _set(["detector", "config", "threshold"], fitted.threshold * 10), reseal=False
    )
    with pytest.raises(DetectorFormatError, match="does not match its own checksum"):
        load_detector(saved)


def test_duplicate_json_keys_are_rejected(saved):
    text = (saved / "config.json").read_text()
    (saved / "config.json").write_text(
        text.replace('{\n  "format"', '{"detector": "x",\n"format"', 1)
    )
    with pytest.raises(DetectorFormatError, match="duplicate key 'detector'"):
        load_detector(saved)


def test_symlinked_file_is_refused(saved, tmp_path):
    outside = tmp_path / "outside.safetensors"
    (data_of(saved) / "model.safetensors").rename(outside)
    (data_of(saved) / "model.safetensors").symlink_to(outside)
    with pytest.raises(DetectorFormatError, match=r"model\.safetensors is not a regular file"):
        load_detector(saved)


def test_unlisted_files_are_ignored(saved, fitted, digits):
    (data_of(saved) / "notes.txt").write_text("hello")
    loaded = load_detector(saved)
    assert np.array_equal(loaded.score(digits[2]), fitted.score(digits[2]))


def test_given_module_with_other_shapes_is_refused_untouched(saved):
    wrong = mlp((8, 8), 10, (17,))
    before = [t.clone() for t in wrong.state_dict().values()]
    with pytest.raises(
        ValueError, match=r"given as distilled_model=.*distilled_model\.safetensors"
    ):
        load_detector(saved, distilled_model=wrong)
    assert all(torch.equal(a, b) for a, b in zip(before, wrong.state_dict().values(), strict=True))


def test_given_module_with_other_dtype_is_refused(saved):
    with pytest.raises(ValueError, match=r"dtype float64"):
        load_detector(saved, model=mlp((8, 8), 10, (64,)).double())


def test_given_module_of_wrong_kind_is_refused(saved):
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module .*model\.safetensors"):
        load_detector(saved, model=lambda x: x)


def test_given_modules_receive_the_weights(saved, fitted, digits):
    teacher, student = mlp((8, 8), 10, (64,)), mlp((8, 8), 10, (16,))
    loaded = load_detector(saved, model=teacher, distilled_model=student)
    assert loaded.model is teacher and loaded.distilled_model is student
    assert np.array_equal(loaded.score(digits[2]), fitted.score(digits[2]))


def test_loading_never_unpickles(saved, fitted, digits, tmp_path, monkeypatch):
    cd = fitted.drift_detector(digits[2][:100])
    save_detector(cd, tmp_path / "cd")

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.export, "load"),
        (np, "load"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    load_detector(saved)
    loaded = load_detector(tmp_path / "cd")
    assert np.array_equal(loaded.x_ref, cd.x_ref)


@pytest.mark.parametrize(
    "path",
    [
        "files.py",
        "saving/__init__.py",
        "saving/codec.py",
        "saving/folder.py",
        "backends/torch/io.py",
        "backends/tensorflow/io.py",
    ],
)
def test_source_has_no_unsafe_loaders(path):
    tree = ast.parse((SRC / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for bad in ("pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"):
                assert not any(n.split(".")[0] == bad for n in names), f"{path} imports {bad}"
        if isinstance(node, ast.Attribute):
            if node.attr == "loads":
                assert isinstance(node.value, ast.Name) and node.value.id == "json", path
            assert node.attr not in {"Unpickler", "_pickle_load_obj"}, path
            if node.attr in {"load", "load_file"} and isinstance(node.value, ast.Name):
                assert node.value.id not in {"torch", "np", "numpy", "pickle", "export"}, path
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            raise AssertionError(f"{path} passes allow_pickle")


# ========================================================================= atomic saving
def test_interrupted_save_keeps_the_previous_detector(saved, fitted, digits, monkeypatch):
    old_threshold = fitted.threshold
    old_data = data_of(saved).name
    fitted.threshold = old_threshold + 1.0
    writes = []
    real_write = files.write_new

    def failing_write(path, data):
        writes.append(Path(path).name)
        if len(writes) == 2:  # the student is written, the teacher fails
            raise OSError("disk full (simulated)")
        real_write(path, data)

    monkeypatch.setattr(files, "write_new", failing_write)
    with pytest.raises(OSError, match="simulated"):
        save_detector(fitted, saved)
    assert writes == ["distilled_model.safetensors", "model.safetensors"]
    monkeypatch.undo()

    assert sorted(os.listdir(saved)) == [".lock", "config.json", old_data]  # nothing left over
    assert leftovers(saved.parent) == []
    loaded = load_detector(saved)
    assert loaded.threshold == old_threshold
    assert np.array_equal(loaded.score(digits[2]), fitted.score(digits[2]))


def test_interrupted_first_save_leaves_nothing(fitted, tmp_path, monkeypatch):
    def failing_write(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_new", failing_write)
    with pytest.raises(KeyboardInterrupt):
        save_detector(fitted, tmp_path / "det")
    assert os.listdir(tmp_path) == []
    (tmp_path / "empty").mkdir()  # a folder the user made is left in place
    with pytest.raises(KeyboardInterrupt):
        save_detector(fitted, tmp_path / "empty")
    assert os.listdir(tmp_path / "empty") == [".lock"]
    monkeypatch.undo()
    save_detector(fitted, tmp_path / "empty")
    assert load_detector(tmp_path / "empty").threshold == fitted.threshold


def test_failed_config_replace_keeps_the_previous_detector(saved, fitted, monkeypatch):
    old_threshold = fitted.threshold
    fitted.threshold = old_threshold + 1.0
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "config.json":
            raise OSError("rename failed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        save_detector(fitted, saved)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.iterdir() if p.name.startswith("v-")) == [
        data_of(saved).name
    ]
    assert not [p for p in saved.iterdir() if ".tmp-" in p.name]
    assert load_detector(saved).threshold == old_threshold


def test_format_1_save_killed_between_renames_is_recovered(tmp_path, fitted):
    """A format-1 save killed between its renames left the detector aside as .det.old-<hex>:
    loading (or the next save) puts it back."""
    import shutil

    fixture = Path(__file__).parent / "fixtures" / "v1" / "model_distillation"
    shutil.copytree(fixture, tmp_path / ".det.old-0123456789ab")
    loaded = load_detector(tmp_path / "det")
    assert (
        loaded.threshold
        == json.loads((fixture / "config.json").read_text())["settings"]["threshold"]
    )
    assert sorted(os.listdir(tmp_path)) == ["det"]
    shutil.copytree(fixture, tmp_path / ".det.tmp-0123456789ab")  # a killed save's partial copy
    save_detector(fitted, tmp_path / "det")
    assert sorted(os.listdir(tmp_path)) == ["det"]  # the stale copy was removed
    assert load_detector(tmp_path / "det").threshold == fitted.threshold


def test_save_replaces_only_what_it_wrote(saved, fitted, digits):
    old_data = data_of(saved)
    fitted.threshold = 0.123
    save_detector(fitted, saved)
    assert not old_data.exists()
    assert load_detector(saved).threshold == 0.123
    assert leftovers(saved.parent) == []
    (saved / "results.csv").write_text("the user's own file")
    with pytest.raises(ValueError, match=r"not part of a saved detector: results\.csv"):
        save_detector(fitted, saved)
    assert (saved / "results.csv").read_text() == "the user's own file"
    assert load_detector(saved).threshold == 0.123


def test_format_1_folder_is_replaced_by_its_listed_files_only(tmp_path, fitted):
    import shutil

    fixture = Path(__file__).parent / "fixtures" / "v1" / "ks_drift"
    shutil.copytree(fixture, tmp_path / "det")
    save_detector(fitted, tmp_path / "det")  # every file of the old folder was listed: replaced
    assert sorted(p for p in os.listdir(tmp_path / "det") if not p.startswith("v-")) == [
        ".lock",
        "config.json",
    ]
    shutil.rmtree(tmp_path / "det")
    shutil.copytree(fixture, tmp_path / "det")
    (tmp_path / "det" / "my_data").mkdir()
    (tmp_path / "det" / "my_data" / "results.csv").write_text("precious")
    with pytest.raises(ValueError, match="my_data"):
        save_detector(fitted, tmp_path / "det")
    assert (tmp_path / "det" / "my_data" / "results.csv").read_text() == "precious"
    assert (
        load_detector(tmp_path / "det").n
        == json.loads((fixture / "config.json").read_text())["settings"]["n"]
    )


def test_save_into_empty_or_new_nested_folder(fitted, tmp_path):
    (tmp_path / "empty").mkdir()
    save_detector(fitted, tmp_path / "empty")
    save_detector(fitted, tmp_path / "a" / "b" / "det")
    assert load_detector(tmp_path / "empty").threshold == fitted.threshold
    assert load_detector(tmp_path / "a" / "b" / "det").threshold == fitted.threshold


def test_save_refuses_files_and_foreign_folders(fitted, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        save_detector(fitted, tmp_path / "file")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"not part of a saved detector: thesis\.tex"):
        save_detector(fitted, tmp_path / "home")
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"
    # a folder whose config.json merely carries the format marker is not a detector
    (tmp_path / "home" / "config.json").write_text('{"format": "distilldetect-detector"}')
    with pytest.raises(ValueError, match="thesis.tex"):
        save_detector(fitted, tmp_path / "home")
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


# ======================================================================= argument checks
def test_argument_errors(fitted, saved, tmp_path):
    with pytest.raises(ValueError, match="never writes"):
        save_detector(fitted, tmp_path / "x", legacy=True)
    with pytest.raises(ValueError, match="refused"):
        load_detector(saved, enable_unsafe_loading=True)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['custom_objects'\]"):
        load_detector(saved, custom_objects={})
    with pytest.raises(
        TypeError, match=r"detector must be one of \['KSDrift', 'ModelDistillation'"
    ):
        save_detector(object(), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no saved detector"):
        load_detector(tmp_path / "nowhere")
    assert not (tmp_path / "x").exists()


def test_subclasses_and_non_json_meta_are_refused(digits_teacher, make_student, tmp_path):
    class Custom(ModelDistillation):
        pass

    ad = Custom(distilled_model=make_student(), model=digits_teacher)
    with pytest.raises(TypeError, match="subclass of ModelDistillation"):
        save_detector(ad, tmp_path / "x")
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    ad.meta["when"] = object()
    with pytest.raises(ValueError, match=r"\['meta'\]\['when'\]"):
        save_detector(ad, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_modules_with_extra_state_are_refused(digits_teacher, tmp_path):
    class WithExtra(torch.nn.Sequential):
        def get_extra_state(self):
            return {"a": object()}

        def set_extra_state(self, state):
            pass

    student = WithExtra(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(-1))
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    with pytest.raises(ValueError, match="extra state"):
        save_detector(ad, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_changed_zoo_model_is_saved_without_architecture(digits_teacher, digits, tmp_path):
    student = mlp((8, 8), 10, (16,))
    student.net[1] = torch.nn.Tanh()  # same tensors, other function: must not be "rebuilt"
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    save_detector(ad, tmp_path / "det")
    with pytest.raises(ValueError, match="distilled_model="):
        load_detector(tmp_path / "det")
    loaded = load_detector(tmp_path / "det", distilled_model=copy.deepcopy(student))
    assert np.array_equal(loaded.score(digits[2]), ad.score(digits[2]))


def test_zoo_model_in_float64_and_frozen_round_trips(digits, tmp_path):
    X_train, _, X_test, _ = digits
    torch.manual_seed(0)
    teacher = mlp((8, 8), 10, (32,)).double()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ad = ModelDistillation(distilled_model=mlp((8, 8), 10, (8,)), model=teacher)
    ad.fit(X_train, epochs=1, verbose=False, seed=0)
    save_detector(ad, tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert next(loaded.model.parameters()).dtype == torch.float64
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert np.array_equal(loaded.score(X_test), ad.score(X_test))


def test_rebuilding_leaves_the_global_random_state_alone(saved):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_detector(saved)
    assert torch.equal(torch.rand(3), expected)


def test_detector_parts(digits, digits_teacher, make_student):
    from distilldetect import KSDrift, ModelDistillation
    from distilldetect.saving import detector_parts

    X = digits[0][:200]
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    assert detector_parts(ad) == (ad, None)
    cd = ad.drift_detector(X[:50])
    got_ad, got_cd = detector_parts(cd)
    assert got_ad is ad and got_cd is cd
    with pytest.raises(ValueError, match="without a ModelDistillation"):
        detector_parts(KSDrift(np.zeros(10)))
    with pytest.raises(TypeError, match="must be a ModelDistillation or a KSDrift"):
        detector_parts("nope")
