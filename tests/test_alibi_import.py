"""Detectors saved by alibi-detect, read without running their pickles; fetch_detector / fetch_tf_model.

The fixtures in ``tests/fixtures/alibi/`` were written once by alibi-detect 0.13.0 itself
(``scripts/make_alibi_fixtures.py``, run with ``.venv-reference/bin/python``), with its own scores
on the same inputs; these tests never need alibi-detect. Hostile files are made here: pickles
whose reduce would run a shell command (``os.system``, ``posix.system``, ``subprocess``,
``builtins.eval``...), globals outside the allow list, truncated and garbage files, Keras models
with Lambda layers or data outside the file. Each test that refuses one also checks that the
file the payload would create does not exist.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from distilldetect import KSDrift, load_detector, save_detector
from distilldetect.files import DetectorFormatError
from distilldetect.saving.pickle_reader import (
    UnsafePickleError,
    pickle_globals,
    read_pickle,
)

FIXTURES = Path(__file__).parent / "fixtures" / "alibi"
INFO = json.loads((FIXTURES / "expected.json").read_text())
#: The file that the Lambda layer / pickled function of the fixtures would create if run.
FIXTURE_MARKER = Path(INFO["marker"])


@pytest.fixture(scope="module")
def inputs():
    with np.load(FIXTURES / "inputs.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def copy(tmp_path):
    """Copy a fixture folder into tmp_path (to tamper with it)."""

    def make(name: str) -> Path:
        target = tmp_path / name
        n = 1
        while target.exists():
            n += 1
            target = tmp_path / f"{name}-{n}"
        shutil.copytree(FIXTURES / name, target)
        return target

    return make


@pytest.fixture
def no_fixture_marker():
    """The fixtures' own hostile code (Lambda layer, pickled function) must never run."""
    if FIXTURE_MARKER.exists():
        FIXTURE_MARKER.unlink()
    yield
    ran = FIXTURE_MARKER.exists()
    if ran:
        FIXTURE_MARKER.unlink()
    assert not ran, f"code from a fixture ran: {FIXTURE_MARKER} was created"


# ================================================================= hostile pickles, made here
class Payload:
    """Pickles as ``func(*args)``: what a hostile .dill does when pickle or dill loads it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, tuple[Payload, str]]:
    """name -> (payload creating ``marker`` when unpickled, the global the error must name)."""
    m = str(marker)
    return {
        "os.system": (Payload(os.system, f"touch {m}"), "posix.system"),
        "subprocess.check_call": (
            Payload(subprocess.check_call, ["touch", m]),
            "subprocess.check_call",
        ),
        "subprocess.Popen": (Payload(subprocess.Popen, ["touch", m]), "subprocess.Popen"),
        "builtins.eval": (Payload(builtins.eval, f"open({m!r}, 'w').close()"), "builtins.eval"),
        "builtins.exec": (Payload(builtins.exec, f"open({m!r}, 'w').close()"), "builtins.exec"),
        "open": (Payload(builtins.open, m, "w"), "io.open"),
    }


def prove_live(name: str, marker: Path) -> None:
    """Show that each payload's call really creates the marker (called directly, not unpickled)."""
    probe = marker.with_name(marker.name + "-probe")
    payload, _ = payloads(probe)[name]
    result = payload.func(*payload.args)
    if hasattr(result, "wait"):
        result.wait(timeout=30)
    if hasattr(result, "close"):
        result.close()
    assert probe.exists(), f"the {name} payload does not create its marker"
    probe.unlink()


# Handwritten streams: protocol-0 GLOBAL 'os system' (the classic), INST, OBJ, NEWOBJ, BUILD.
def raw_payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    cmd = f"touch {marker}".encode()
    return {
        "GLOBAL os.system": (b"cos\nsystem\n(S'" + cmd + b"'\ntR.", "os.system"),
        "INST os.system": (b"(S'" + cmd + b"'\nios\nsystem\n.", "os.system"),
        "OBJ os.system": (b"(cos\nsystem\nS'" + cmd + b"'\no.", "os.system"),
        "NEWOBJ collections.OrderedDict": (
            b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)\x81.",
            "collections.OrderedDict",
        ),
        "STACK_GLOBAL posix.system": (
            b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.",
            "posix.system",
        ),
    }


# ================================================================= the restricted reader
PLAIN = {
    "threshold": np.float64(0.25),
    "f32": np.float32(1.5),
    "i64": np.int64(-3),
    "u8": np.uint8(7),
    "b": np.bool_(True),
    "c": np.complex128(1 - 2j),
    "temperature": 0.5,
    "loss_type": "kld",
    "none": None,
    "flags": (True, False),
    "big": 2**100,
    "neg": -12345,
    "bytes": b"\x00\xff",
    "bytearray": bytearray(b"ab"),
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "nested": [{"a": [1, 2.5]}, (), [], {}],
    "text": "été",
}


@pytest.mark.parametrize("protocol", range(6))
def test_plain_data_and_numpy_scalars_in_every_protocol(protocol):
    value = read_pickle(pickle.dumps(PLAIN, protocol=protocol), "state.dill")
    assert value == PLAIN
    for key in ("threshold", "f32", "i64", "u8", "b", "c"):
        assert type(value[key]) is type(PLAIN[key]), key


def test_big_endian_numpy_scalar():
    x = np.array([1.25], dtype=">f8")[0]
    assert read_pickle(pickle.dumps(x, protocol=2), "x.dill") == 1.25


def test_alibi_detects_own_settings_pickles():
    """What alibi-detect 0.13.0 wrote: meta.dill and ModelDistillation.dill (plain dicts; the
    threshold a numpy float64 from infer_threshold, or the float that was set)."""
    for name in ("md_kld", "md_xent", "md_lambda"):
        saved = INFO["settings"][name]
        meta = read_pickle((FIXTURES / name / "meta.dill").read_bytes(), "meta.dill")
        state = read_pickle((FIXTURES / name / "ModelDistillation.dill").read_bytes(), "x")
        assert meta == saved["meta"]
        assert set(state) == {"threshold", "temperature", "loss_type"}
        assert type(state["threshold"]).__name__ == saved["threshold_type"]
        assert state["threshold"] == saved["threshold"]
        assert (state["temperature"], state["loss_type"]) == (
            saved["temperature"],
            saved["loss_type"],
        )


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.check_call",
        "subprocess.Popen",
        "builtins.eval",
        "builtins.exec",
        "open",
    ],
)
def test_a_reduce_that_would_run_code_is_refused_and_nothing_runs(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    prove_live(name, marker)
    payload, global_name = payloads(marker)[name]
    data = pickle.dumps({"threshold": payload}, protocol=protocol)
    with pytest.raises(UnsafePickleError) as err:
        read_pickle(data, tmp_path / "ModelDistillation.dill")
    assert str(tmp_path / "ModelDistillation.dill") in str(err.value)
    # protocols 0-2 spell some modules the Python 2 way (subprocess -> commands)
    met = pickle_globals(data)[0]
    assert met.rsplit(".", 1)[1] == global_name.rsplit(".", 1)[1]
    assert f"the global {met}," in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", sorted(raw_payloads(Path("/x"))))
def test_handwritten_opcode_streams_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, global_name = raw_payloads(marker)[kind]
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        read_pickle(data, "evil.dill")
    assert not marker.exists()


@pytest.mark.parametrize(
    "value, global_name",
    [
        (collections.OrderedDict(a=1), "collections.OrderedDict"),
        (np.array([1.0, 2.0]), "numpy._core.multiarray._reconstruct"),
        (np.dtype([("a", "f4")]), "numpy.dtype"),  # a structured dtype: not a plain one
        (complex(1, 2), "builtins.complex"),
        (slice(1, 2), "builtins.slice"),
        (Path("/etc/passwd"), "pathlib"),
    ],
)
def test_globals_outside_the_allow_list_are_refused(value, global_name):
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        read_pickle(pickle.dumps({"x": value}, protocol=4), "state.dill")


def test_an_allowed_global_called_with_other_arguments_is_refused():
    # numpy.dtype('O') (object): scalar() would then unpickle Python objects from bytes
    data = pickle.dumps(np.float64(1.0), protocol=2).replace(b"f8", b"O8")
    with pytest.raises(UnsafePickleError, match="not a plain numeric dtype"):
        read_pickle(data, "x.dill")


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "is empty"),
        (b"garbage, not a pickle", "not a valid pickle"),
        (b"\x80\x04N", "truncated or damaged.*before seeing STOP"),
        (b"\x80\x04N.trailing", "bytes follow its STOP"),
        (b"\x80\x09N.", "unsupported pickle protocol"),
        (b"\x80\x04h\x05.", "memo entry 5 is read before it is written"),
        (b"\x80\x04a.", "the stack is empty"),
        (b"\x80\x04(N.", "values are left on the stack"),
        (b"\x80\x04}]Ns.", "not hashable"),  # {[]: None}
        (b"\x80\x04\x8c\x01a\x8c\x01b\x8c\x01c\x87(\x8c\x01x\x8c\x01yu.", "SETITEM on a tuple"),
        (b"\x80\x05\x97.", "out-of-band buffers"),
        (b"\x80\x04\x82\x01.", "extension registry"),
        (b"\x80\x04N\x51.", "persistent id"),
    ],
)
def test_malformed_streams_raise_a_clear_format_error(data, match):
    with pytest.raises(DetectorFormatError, match=match):
        read_pickle(data, "bad.dill")


def test_every_truncation_of_a_real_dill_is_a_format_error():
    data = (FIXTURES / "md_kld" / "ModelDistillation.dill").read_bytes()
    for cut in range(len(data)):
        with pytest.raises(DetectorFormatError):
            read_pickle(data[:cut], "cut.dill")


def test_cycles_and_exponential_sharing_are_refused():
    loop = []
    loop.append(loop)
    with pytest.raises(DetectorFormatError, match="contains itself"):
        read_pickle(pickle.dumps(loop), "loop.dill")
    layer: list = [0]
    for _ in range(40):  # 2**40 leaves when expanded; a few hundred bytes as a pickle
        layer = [layer, layer]
    with pytest.raises(DetectorFormatError, match="expands to more than"):
        read_pickle(pickle.dumps(layer), "bomb.dill")


def test_pickle_globals_describes_without_running(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(Payload(os.system, f"touch {marker}"))
    assert pickle_globals(data) == ["posix.system"]
    names = pickle_globals((FIXTURES / "ks_score" / "preprocess_fn" / "function.dill").read_bytes())
    assert "alibi_detect.ad.model_distillation.ModelDistillation.score" in names
    assert not marker.exists()


# ================================================================= hostile alibi folders
@pytest.mark.parametrize("file", ["meta.dill", "ModelDistillation.dill"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.check_call"])
def test_hostile_dill_in_an_alibi_folder_is_refused_naming_file_and_global(
    tmp_path, copy, file, name
):
    folder = copy("md_kld")
    marker = tmp_path / "pwned"
    payload, global_name = payloads(marker)[name]
    if file == "meta.dill":
        body = {"name": "ModelDistillation", "version": payload}
    else:
        body = {"threshold": payload, "temperature": 1.0, "loss_type": "kld"}
    (folder / file).write_bytes(pickle.dumps(body, protocol=4))
    with pytest.raises(UnsafePickleError) as err:
        load_detector(folder)
    assert str(folder / file) in str(err.value) and global_name in str(err.value)
    assert not marker.exists()


def test_truncated_and_missing_files_of_an_alibi_folder_name_the_file(copy):
    folder = copy("md_kld")
    data = (folder / "ModelDistillation.dill").read_bytes()
    (folder / "ModelDistillation.dill").write_bytes(data[: len(data) // 2])
    with pytest.raises(DetectorFormatError, match=r"ModelDistillation\.dill is not a valid pickle"):
        load_detector(folder)
    (folder / "ModelDistillation.dill").unlink()
    with pytest.raises(DetectorFormatError, match=r"ModelDistillation\.dill is missing"):
        load_detector(folder)


def test_other_alibi_detectors_and_odd_settings_are_refused(copy):
    folder = copy("md_kld")
    (folder / "meta.dill").write_bytes(pickle.dumps({"name": "OutlierVAE"}))
    with pytest.raises(DetectorFormatError, match="'OutlierVAE' detector"):
        load_detector(folder)
    folder = copy("md_xent")
    (folder / "ModelDistillation.dill").write_bytes(
        pickle.dumps({"threshold": None, "temperature": 1.0, "loss_type": "kld", "x": 1})
    )
    with pytest.raises(DetectorFormatError, match=r"unknown \['x'\]"):
        load_detector(folder)


# ================================================================= KSDrift config folders
def _drift_matches(cd, name, batches, expected):
    for i, batch in enumerate(batches):
        data = cd.predict(batch)["data"]
        np.testing.assert_allclose(data["p_val"], expected[f"{name}/p_val/{i}"], atol=1e-5)
        np.testing.assert_allclose(data["distance"], expected[f"{name}/distance/{i}"], atol=1e-5)
        assert data["is_drift"] == expected[f"{name}/is_drift/{i}"]
        np.testing.assert_allclose(data["threshold"], expected[f"{name}/threshold/{i}"])


def test_ksdrift_config_folder_p_values_equal_alibis(inputs, expected):
    cd = load_detector(FIXTURES / "ks_plain")
    assert isinstance(cd, KSDrift)
    assert (cd.p_val, cd.correction, cd.alternative) == (0.05, "bonferroni", "two-sided")
    np.testing.assert_array_equal(cd.x_ref, inputs["feat_ref"])
    assert cd.meta["ported_from"] == {
        "library": "alibi-detect",
        "version": "0.13.0",
        "format": "config (config.toml)",
    }
    _drift_matches(cd, "ks_plain", [inputs["feat_test"]], expected)


def test_ksdrift_config_options_and_reference_updates_equal_alibis(inputs, expected):
    cd = load_detector(FIXTURES / "ks_options")
    assert (cd.p_val, cd.correction, cd.alternative) == (0.1, "fdr", "greater")
    assert cd.update_x_ref == {"last": 150}
    # the second batch is tested against the reference updated by the first, as in alibi
    _drift_matches(cd, "ks_options", [inputs["feat_test"], inputs["feat_test2"]], expected)
    assert len(cd.x_ref) == 150


def test_ksdrift_with_a_pickled_function_is_refused_saying_which(no_fixture_marker):
    with pytest.raises(ValueError) as err:
        load_detector(FIXTURES / "ks_function")
    message = str(err.value)
    assert "function.dill" in message and "dill._dill._create_code" in message
    assert "preprocess_fn=fn" in message


def test_ksdrift_folder_hostile_settings(tmp_path, copy):
    folder = copy("ks_plain")
    toml = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(toml.replace('x_ref = "x_ref.npy"', 'x_ref = "../x.npy"'))
    with pytest.raises(DetectorFormatError, match="only paths inside the detector's folder"):
        load_detector(folder)
    marker = tmp_path / "pwned"
    np.save(
        folder / "x_ref.npy", np.array([Payload(os.system, f"touch {marker}")]), allow_pickle=True
    )
    (folder / "config.toml").write_text(toml)
    with pytest.raises(DetectorFormatError, match="cannot be read without pickle"):
        load_detector(folder)
    assert not marker.exists()
    (folder / "config.toml").write_text(toml.replace('name = "KSDrift"', 'name = "MMDDrift"'))
    with pytest.raises(DetectorFormatError, match="'MMDDrift' detector"):
        load_detector(folder)
    (folder / "config.toml").write_text("backend = 'pytorch'\n" + toml)
    with pytest.raises(DetectorFormatError, match=r"settings \['backend'\]"):
        load_detector(folder)
    (folder / "config.toml").write_text("name = ")
    with pytest.raises(DetectorFormatError, match="config.toml is not valid TOML"):
        load_detector(folder)


def test_preprocess_fn_keyword_is_only_for_alibi_config_folders(tmp_path):
    save_detector(KSDrift(np.zeros((5, 2))), tmp_path / "ours")
    with pytest.raises(ValueError, match="only taken for a KSDrift saved by alibi-detect"):
        load_detector(tmp_path / "ours", preprocess_fn=np.mean)
    with pytest.raises(ValueError, match="has none"):
        load_detector(FIXTURES / "ks_plain", preprocess_fn=np.mean)


# ================================================================= Keras models (.h5)
tf_only = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


@tf_only
@pytest.mark.parametrize("name", ["md_kld", "md_xent"])
def test_model_distillation_scores_equal_alibis(tf, name, inputs, expected, no_fixture_marker):
    from distilldetect import ModelDistillation

    saved = INFO["settings"][name]
    ad = load_detector(FIXTURES / name)
    assert type(ad) is ModelDistillation
    assert ad.threshold == saved["threshold"]
    assert (ad.temperature, ad.loss_type) == (saved["temperature"], saved["loss_type"])
    for key in ("name", "online", "data_type", "detector_type"):
        assert ad.meta[key] == saved["meta"][key]
    assert ad.meta["ported_from"]["version"] == saved["meta"]["version"]
    x = inputs["x"]
    np.testing.assert_allclose(ad.score(x), expected[f"{name}/score"], rtol=1e-5, atol=1e-5)
    pred = ad.predict(x)["data"]
    np.testing.assert_array_equal(pred["is_adversarial"], expected[f"{name}/is_adversarial"])
    if name == "md_kld":
        from distilldetect import predict_batch

        for key, model in (("teacher_probs", ad.model), ("student_probs", ad.distilled_model)):
            np.testing.assert_allclose(
                predict_batch(x, model), expected[f"md_kld/{key}"], atol=1e-5
            )


@tf_only
def test_a_ported_detector_saves_and_loads_in_our_format(tf, tmp_path, inputs, expected):
    ad = load_detector(FIXTURES / "md_xent")
    save_detector(ad, tmp_path / "ported")
    back = load_detector(tmp_path / "ported")
    np.testing.assert_allclose(back.score(inputs["x"]), expected["md_xent/score"], atol=1e-5)
    assert back.meta["ported_from"]["library"] == "alibi-detect"
    assert back.threshold == 0.25


@tf_only
def test_the_0_10_layout_is_read(tf, copy, inputs, expected):
    folder = copy("md_kld")
    (folder / "distilled_model").mkdir()
    (folder / "model" / "distilled_model.h5").rename(folder / "distilled_model" / "model.h5")
    ad = load_detector(folder)
    np.testing.assert_allclose(ad.score(inputs["x"]), expected["md_kld/score"], atol=1e-5)


@tf_only
def test_a_lambda_teacher_is_refused_naming_the_layer_and_never_runs(tf, no_fixture_marker):
    with pytest.raises(ValueError) as err:
        load_detector(FIXTURES / "md_lambda")
    message = str(err.value)
    assert "model.h5" in message and "layer 'lambda' (Lambda)" in message
    assert "model=" in message


@tf_only
def test_a_lambda_teacher_loads_into_a_model_the_user_builds(
    tf, inputs, expected, no_fixture_marker
):
    import keras

    inp = keras.Input((8, 8))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)  # the user's own code, not the file's
    x = keras.layers.Reshape((8, 8, 1))(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    teacher = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))
    ad = load_detector(FIXTURES / "md_lambda", model=teacher)
    assert ad.model is teacher
    np.testing.assert_allclose(ad.score(inputs["x"]), expected["md_lambda/score"], atol=1e-5)


@tf_only
def test_h5_with_data_outside_the_file_is_refused(tf, tmp_path, copy):
    import h5py

    folder = copy("md_kld")
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["w"] = np.zeros(3, np.float32)
    with h5py.File(folder / "model" / "model.h5", "a") as f:
        f["model_weights"]["leak"] = h5py.ExternalLink(str(secret), "/w")
    with pytest.raises(DetectorFormatError, match="ExternalLink"):
        load_detector(folder)
    folder = copy("md_xent")
    with h5py.File(folder / "model" / "distilled_model.h5", "a") as f:
        raw = tmp_path / "raw.bin"
        raw.write_bytes(b"\0" * 16)
        f["model_weights"].create_dataset(
            "ext", shape=(4,), dtype="f4", external=[(str(raw), 0, 16)]
        )
    with pytest.raises(DetectorFormatError, match="external file"):
        load_detector(folder)
    folder = copy("md_xent")
    (folder / "model" / "model.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DetectorFormatError, match=r"model\.h5 is not an HDF5 file"):
        load_detector(folder)


@tf_only
def test_h5_layers_that_carry_code_are_refused(tf, copy):
    import h5py

    for cls, match in [
        ("TFSMLayer", "TFSMLayer loads a TensorFlow SavedModel"),
        ("MyCustomLayer", "not a built-in Keras layer"),
    ]:
        folder = copy("md_kld") if cls == "TFSMLayer" else copy("md_xent")
        with h5py.File(folder / "model" / "model.h5", "a") as f:
            config = json.loads(f.attrs["model_config"])
            config["config"]["layers"][2]["class_name"] = cls
            f.attrs["model_config"] = json.dumps(config)
        with pytest.raises(ValueError, match=match):
            load_detector(folder)


@tf_only
def test_ksdrift_with_preprocess_drift_model_equals_alibi(tf, inputs, expected):
    cd = load_detector(FIXTURES / "ks_model")
    assert isinstance(cd.preprocess_fn, partial) and cd.preprocess_fn.keywords["batch_size"] == 32
    _drift_matches(cd, "ks_model", [inputs["x"][64:]], expected)


@tf_only
def test_ksdrift_on_modeldistillation_scores_alibis_docs_recipe(
    tf, tmp_path, inputs, expected, no_fixture_marker
):
    with pytest.raises(ValueError) as err:
        load_detector(FIXTURES / "ks_score")
    message = str(err.value)
    assert "alibi_detect.ad.model_distillation.ModelDistillation.score" in message
    assert "preprocess_fn=ad.score" in message and "{'batch_size': 128}" in message
    ad = load_detector(FIXTURES / "md_kld")
    cd = load_detector(FIXTURES / "ks_score", preprocess_fn=ad.score)
    assert cd.preprocess_fn.keywords == {"batch_size": 128}
    x = inputs["x"]
    _drift_matches(cd, "ks_score", [x[64:], x[:64]], expected)
    save_detector(cd, tmp_path / "ks")  # ours now: the ModelDistillation is saved with it
    back = load_detector(tmp_path / "ks")
    np.testing.assert_allclose(
        back.predict(x[64:])["data"]["p_val"], expected["ks_score/p_val/0"], atol=1e-5
    )


# ================================================================= fetching
BUCKET = "/bucket/alibi-detect/"
DETECTOR = "ad/digits/tiny_cnn/model_distillation"


def serve_detector(server, name="md_kld", prefix=DETECTOR, suffix=".dill"):
    """The fixture in the bucket's layout (``suffix='.pickle'``: as older alibi-detects)."""
    folder = FIXTURES / name
    for rel in ("model/model.h5", "model/distilled_model.h5"):
        server.add(f"{BUCKET}{prefix}/{rel}", (folder / rel).read_bytes())
    for stem in ("meta", "ModelDistillation"):
        server.add(f"{BUCKET}{prefix}/{stem}{suffix}", (folder / f"{stem}.dill").read_bytes())
    return server.url(BUCKET)


@tf_only
def test_fetch_detector_downloads_verifies_and_caches(tf, tmp_path, server, inputs, expected):
    from distilldetect.fetching import fetch_detector

    base = serve_detector(server)
    args = (tmp_path / "det", "adversarial", "digits", "model_distillation")
    kw = {"model": "tiny_cnn", "base_url": base, "cache_dir": tmp_path / "cache", "verbose": False}
    ad = fetch_detector(*args, **kw)
    np.testing.assert_allclose(ad.score(inputs["x"]), expected["md_kld/score"], atol=1e-5)
    assert ad.threshold == INFO["settings"]["md_kld"]["threshold"]
    for rel in (
        "meta.dill",
        "ModelDistillation.dill",
        "model/model.h5",
        "model/distilled_model.h5",
    ):
        assert (tmp_path / "det" / rel).read_bytes() == (FIXTURES / "md_kld" / rel).read_bytes()
    record = json.loads((tmp_path / "cache" / "alibi-detect" / "checksums.json").read_text())
    h5 = (FIXTURES / "md_kld" / "model" / "model.h5").read_bytes()
    assert record[f"{DETECTOR}/model/model.h5"]["sha256"] == hashlib.sha256(h5).hexdigest()
    n_requests = len(server.requests)
    ad2 = fetch_detector(*args, **kw)  # from the cache: no request
    assert len(server.requests) == n_requests
    np.testing.assert_allclose(ad2.score(inputs["x"]), expected["md_kld/score"], atol=1e-5)
    # and the folder it wrote is alibi-detect's layout, which load_detector reads
    np.testing.assert_allclose(
        load_detector(tmp_path / "det").score(inputs["x"]), expected["md_kld/score"], atol=1e-5
    )


@tf_only
def test_a_server_that_starts_serving_other_bytes_is_refused(tf, tmp_path, server):
    from distilldetect.datasets import DownloadError
    from distilldetect.fetching import fetch_detector

    base = serve_detector(server)
    kw = {"model": "tiny_cnn", "base_url": base, "cache_dir": tmp_path / "cache", "verbose": False}
    fetch_detector(tmp_path / "det", "adversarial", "digits", "model_distillation", **kw)
    cached = tmp_path / "cache" / "alibi-detect" / DETECTOR / "ModelDistillation.dill"
    good = cached.read_bytes()
    marker = tmp_path / "pwned"
    payload, _ = payloads(marker)["os.system"]
    tampered = pickle.dumps({"threshold": payload, "temperature": 1.0, "loss_type": "kld"})
    server.add(f"{BUCKET}{DETECTOR}/ModelDistillation.dill", tampered)
    # force a new download: refused by the SHA-256 recorded the first time; the cache keeps its copy
    with pytest.raises(DownloadError, match="checksum mismatch.*expected SHA-256"):
        fetch_detector(
            tmp_path / "det2", "adversarial", "digits", "model_distillation", force=True, **kw
        )
    assert cached.read_bytes() == good
    # a damaged cache is downloaded again, and the tampered server is refused; nothing is kept
    cached.write_bytes(good[:-3])
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_detector(tmp_path / "det3", "adversarial", "digits", "model_distillation", **kw)
    assert not cached.exists() and not (tmp_path / "det3" / "ModelDistillation.dill").exists()
    assert not marker.exists()
    # the server is repaired: the cache fills again
    server.add(f"{BUCKET}{DETECTOR}/ModelDistillation.dill", good)
    fetch_detector(tmp_path / "det3", "adversarial", "digits", "model_distillation", **kw)
    assert cached.read_bytes() == good


@tf_only
def test_a_published_checksum_wins(tf, tmp_path, server):
    from distilldetect.datasets import DownloadError
    from distilldetect.fetching import fetch_detector

    base = serve_detector(server)
    rel = f"{DETECTOR}/model/model.h5"
    kw = {"model": "tiny_cnn", "base_url": base, "cache_dir": tmp_path / "cache", "verbose": False}
    with pytest.raises(DownloadError, match="checksum mismatch"):  # even on the first download
        fetch_detector(tmp_path / "a", "adversarial", "digits", "model_distillation",
                       checksums={rel: "0" * 64}, **kw)  # fmt: skip
    real = hashlib.sha256((FIXTURES / "md_kld" / "model" / "model.h5").read_bytes()).hexdigest()
    fetch_detector(tmp_path / "b", "adversarial", "digits", "model_distillation",
                   checksums={rel: real}, **kw)  # fmt: skip


@tf_only
def test_fetch_detector_options(tf, tmp_path, server, monkeypatch, inputs, expected):
    from distilldetect.fetching import MODELS_URL_ENV, fetch_detector

    base = serve_detector(server, suffix=".pickle")  # older detectors: meta.pickle
    monkeypatch.setenv(MODELS_URL_ENV, base)
    ad = fetch_detector(tmp_path / "det", "adversarial", "digits", "model_distillation",
                        model="tiny_cnn", cache_dir=tmp_path / "cache", verbose=False)  # fmt: skip
    np.testing.assert_allclose(ad.score(inputs["x"]), expected["md_kld/score"], atol=1e-5)
    assert any(r.endswith("/meta.dill") for r in server.requests)  # tried first, 404
    # a different file already in the folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.pickle").write_bytes(b"my own file")
    with pytest.raises(ValueError, match="exists and differs"):
        fetch_detector(tmp_path / "mine", "adversarial", "digits", "model_distillation",
                       model="tiny_cnn", cache_dir=tmp_path / "cache", verbose=False)  # fmt: skip
    assert (tmp_path / "mine" / "meta.pickle").read_bytes() == b"my own file"
    save_detector(KSDrift(np.zeros((5, 2))), tmp_path / "ours")
    with pytest.raises(ValueError, match="holds a detector saved by distilldetect"):
        fetch_detector(tmp_path / "ours", "adversarial", "digits", "model_distillation",
                       model="tiny_cnn", cache_dir=tmp_path / "cache", verbose=False)  # fmt: skip


def test_fetch_detector_argument_errors(tmp_path):
    from distilldetect.fetching import fetch_detector, fetch_tf_model

    with pytest.raises(ValueError, match="outlier detectors are not part"):
        fetch_detector(tmp_path, "outlier", "kddcup", "OutlierVAE")
    with pytest.raises(ValueError, match="detector_type must be 'adversarial'"):
        fetch_detector(tmp_path, "drift", "cifar10", "x", model="y")
    with pytest.raises(ValueError, match="dataset must be a plain name"):
        fetch_detector(tmp_path, "adversarial", "../etc", "x", model="y")
    with pytest.raises(ValueError, match="model .* is required"):
        fetch_detector(tmp_path, "adversarial", "cifar10", "model_distillation")
    with pytest.raises(ValueError, match="base_url must be an http"):
        fetch_detector(tmp_path, "adversarial", "cifar10", "md", model="m", base_url="file:///x")
    with pytest.raises(ValueError, match="model must be a plain name"):
        fetch_tf_model("cifar10", "a/b")


@tf_only
def test_fetch_tf_model(tf, tmp_path, server, inputs, expected, no_fixture_marker):
    from distilldetect import predict_batch
    from distilldetect.fetching import fetch_tf_model

    server.add(f"{BUCKET}classifier/digits/tiny_cnn/model.h5",
               (FIXTURES / "md_kld" / "model" / "model.h5").read_bytes())  # fmt: skip
    server.add(f"{BUCKET}classifier/digits/lambda/model.h5",
               (FIXTURES / "md_lambda" / "model" / "model.h5").read_bytes())  # fmt: skip
    kw = {"base_url": server.url(BUCKET), "cache_dir": tmp_path / "cache", "verbose": False}
    clf = fetch_tf_model("digits", "tiny_cnn", **kw)
    np.testing.assert_allclose(
        predict_batch(inputs["x"], clf), expected["md_kld/teacher_probs"], atol=1e-5
    )
    with pytest.raises(ValueError, match=r"layer 'lambda' \(Lambda\) is refused.*into="):
        fetch_tf_model("digits", "lambda", **kw)


# ================================================================= the shipped detector
def test_pretrained_fashion_mnist_is_offline_and_documented(tmp_path):
    from distilldetect import ModelDistillation
    from distilldetect.fetching import fetch_detector, pretrained, pretrained_info

    info = pretrained_info("fashion_mnist")
    assert info["recipe"]["student"]["loss_type"] == "xent"
    ad = fetch_detector(tmp_path / "fm", "adversarial", "fashion_mnist", "model_distillation",
                        model="cnn_classifier")  # fmt: skip
    assert type(ad) is ModelDistillation and ad.threshold == info["test_set"]["threshold"]
    assert (ad.loss_type, ad.temperature) == ("xent", 0.5)
    assert load_detector(tmp_path / "fm").threshold == ad.threshold
    assert pretrained("fashion_mnist").threshold == ad.threshold
    with pytest.raises(ValueError, match="name must be one of"):
        pretrained("cifar10")


@pytest.mark.slow
def test_pretrained_fashion_mnist_scores_what_its_record_says():
    from distilldetect import predict_batch
    from distilldetect.datasets import load_fashion_mnist
    from distilldetect.experiments.harmful_drift import to_model_input
    from distilldetect.fetching import pretrained, pretrained_info

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed locally")
    (_, _), (x_test, y_test) = load_fashion_mnist(verbose=False, download_if_missing=False)
    X = to_model_input(x_test)
    ad, info = pretrained("fashion_mnist"), pretrained_info("fashion_mnist")["test_set"]
    teacher = predict_batch(X, ad.model, batch_size=1000)
    student = predict_batch(X, ad.distilled_model, batch_size=1000)
    assert round(float((teacher.argmax(1) == y_test).mean()), 4) == info["teacher_test_accuracy"]
    agreement = float((student.argmax(1) == teacher.argmax(1)).mean())
    assert round(agreement, 4) == info["student_agreement"]
    scores = ad.score(X[5000:], batch_size=1000, teacher_probs=teacher[5000:])
    assert round(float((scores > ad.threshold).mean()), 4) == info["flagged_test_5000_9999"]


def test_loading_never_imports_dill_or_unpickles(monkeypatch):
    """The readers never call pickle's loaders (the restricted reader only parses)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle.load(s) was called")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    cd = load_detector(FIXTURES / "ks_plain")
    assert cd.n_features == 3
    read_pickle((FIXTURES / "md_kld" / "meta.dill").read_bytes())
