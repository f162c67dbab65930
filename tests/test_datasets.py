"""The data set loaders on small files in the real formats, written by the tests.

Fashion-MNIST: gzipped (or plain) IDX files with the real magic numbers; CIFAR-10: 3,073-byte
binary records in a tar.gz with the real member names; CIFAR-10-C: uint8 ``.npy`` files with a
few rows per severity (the loader takes rows-per-severity = file length / 5). Downloads go to
a local HTTP server on 127.0.0.1; nothing touches the internet. The real Fashion-MNIST files of
the Debian package are checked when installed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from distilldetect.datasets import (
    Bunch,
    DownloadError,
    corruption_types_cifar10c,
    fetch_cifar10c,
    load_cifar10,
    load_fashion_mnist,
)
from distilldetect.datasets import cifar10 as c10
from distilldetect.datasets import cifar10c as c10c
from distilldetect.datasets import fashion_mnist as fm

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No $DISTILLDETECT_DATA, a private cache, no Debian directory: only what a test writes."""
    monkeypatch.delenv("DISTILLDETECT_DATA", raising=False)
    monkeypatch.setenv("DISTILLDETECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    return tmp_path


def files_in(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- Fashion-MNIST


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(directory: Path, *, gz: bool = True, n_train: int = 7, n_test: int = 3, seed=0):
    """Write the four Fashion-MNIST files; return ((x_train, y_train), (x_test, y_test))."""
    rng = np.random.default_rng(seed)
    arrays = {
        fm.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        fm.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        fm.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        fm.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (directory / name).write_bytes(gzip.compress(raw))
        else:
            (directory / name.removesuffix(".gz")).write_bytes(raw)
    return (arrays[fm.TRAIN_IMAGES], arrays[fm.TRAIN_LABELS]), (
        arrays[fm.TEST_IMAGES],
        arrays[fm.TEST_LABELS],
    )


def assert_same(result, expected):
    for got_split, want_split in zip(result, expected, strict=True):
        for got, want in zip(got_split, want_split, strict=True):
            assert got.dtype == np.uint8
            assert got.flags.writeable
            np.testing.assert_array_equal(got, want)


def test_fashion_from_data_dir(tmp_path):
    expected = write_fashion(tmp_path / "fm")
    result = load_fashion_mnist(tmp_path / "fm", verbose=False)
    assert result[0][0].shape == (7, 28, 28) and result[0][1].shape == (7,)
    assert_same(result, expected)


def test_fashion_uncompressed_files_in_subfolder(tmp_path):
    expected = write_fashion(tmp_path / "root" / "fashion-mnist", gz=False)
    assert_same(load_fashion_mnist(str(tmp_path / "root"), verbose=False), expected)


def test_fashion_env_dir_comes_before_debian_dir(tmp_path, monkeypatch):
    expected = write_fashion(tmp_path / "env" / "fashion-mnist", seed=1)
    write_fashion(tmp_path / "debian", seed=2)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("DISTILLDETECT_DATA", str(tmp_path / "env"))
    assert_same(load_fashion_mnist(download_if_missing=False), expected)
    monkeypatch.delenv("DISTILLDETECT_DATA")
    debian = load_fashion_mnist(download_if_missing=False)
    assert not np.array_equal(debian[0][0], expected[0][0])


def test_fashion_missing_file_names_file_and_directories(tmp_path):
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / fm.TEST_LABELS).unlink()
    with pytest.raises(ValueError) as info:
        load_fashion_mnist(tmp_path / "fm", verbose=False)
    message = str(info.value)
    assert "missing t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "fm") in message and str(tmp_path / "fm" / "fashion-mnist") in message


def test_fashion_not_found_without_download(tmp_path):
    with pytest.raises(ValueError, match="download_if_missing=False") as info:
        load_fashion_mnist(download_if_missing=False)
    assert str(tmp_path / "no-debian") in str(info.value)
    assert str(tmp_path / "cache" / "fashion-mnist") in str(info.value)


@pytest.mark.parametrize(
    ("data_dir", "error", "match"),
    [
        ("/no/such/dir", ValueError, "does not exist"),
        (5, TypeError, "data_dir must be a path"),
        ("", ValueError, "non-empty path"),
    ],
)
def test_fashion_bad_data_dir(data_dir, error, match):
    with pytest.raises(error, match=match):
        load_fashion_mnist(data_dir)


def test_fashion_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a directory"):
        load_fashion_mnist(tmp_path / "f")


def test_fashion_wrong_magic(tmp_path):
    write_fashion(tmp_path)
    labels = np.zeros(7, np.uint8)
    (tmp_path / fm.TRAIN_LABELS).write_bytes(gzip.compress(idx_bytes(labels, magic=0x00000803)))
    with pytest.raises(ValueError, match=r"magic number 0x00000803, expected 0x00000801") as info:
        load_fashion_mnist(tmp_path)
    assert fm.TRAIN_LABELS in str(info.value)


def test_fashion_not_idx_at_all(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / fm.TRAIN_IMAGES).write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_fashion_mnist(tmp_path)


def test_fashion_truncated_gzip(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / fm.TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="damaged or truncated gzip") as info:
        load_fashion_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_fashion_truncated_plain_file(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / fm.TEST_IMAGES.removesuffix(".gz")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"truncated: its header announces shape \(3, 28, 28\)"):
        load_fashion_mnist(tmp_path)


def test_fashion_trailing_bytes(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / fm.TEST_LABELS.removesuffix(".gz")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="has bytes after"):
        load_fashion_mnist(tmp_path)


def test_fashion_sizes_must_agree(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / fm.TEST_LABELS).write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(ValueError, match="holds 4 labels but .* holds 3 images"):
        load_fashion_mnist(tmp_path)


def test_fashion_label_out_of_range(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / fm.TEST_LABELS).write_bytes(gzip.compress(idx_bytes(np.array([1, 10, 2]))))
    with pytest.raises(ValueError, match="label 10; expected labels 0-9"):
        load_fashion_mnist(tmp_path)


def test_fashion_wrong_image_size(tmp_path):
    write_fashion(tmp_path)
    images = np.zeros((3, 27, 28), np.uint8)
    (tmp_path / fm.TEST_IMAGES).write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(ValueError, match=r"shape \(27, 28\), expected \(28, 28\)"):
        load_fashion_mnist(tmp_path)


def test_fashion_download_into_cache(tmp_path, server, monkeypatch):
    expected = write_fashion(tmp_path / "served")
    checksums = {}
    for name in fm.FILES:
        body = (tmp_path / "served" / name).read_bytes()
        server.add(f"/fm/{name}", body)
        checksums[name] = (hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest())
    monkeypatch.setattr(fm, "URLS", (server.url("/down/"), server.url("/fm/")))
    monkeypatch.setattr(fm, "CHECKSUMS", checksums)
    assert_same(load_fashion_mnist(verbose=False), expected)
    assert files_in(tmp_path / "cache") == sorted(f"fashion-mnist/{n}" for n in fm.FILES)
    n_requests = len(server.requests)
    assert_same(load_fashion_mnist(verbose=False), expected)
    assert len(server.requests) == n_requests  # the second call reads the cache


def test_fashion_download_checksum_mismatch(tmp_path, server, monkeypatch):
    write_fashion(tmp_path / "served")
    for name in fm.FILES:
        server.add(f"/fm/{name}", (tmp_path / "served" / name).read_bytes())
    monkeypatch.setattr(fm, "URLS", (server.url("/fm/"),))  # real checksums: the fakes fail
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        load_fashion_mnist(verbose=False)
    assert fm.CHECKSUMS[fm.TRAIN_IMAGES][1] in str(info.value)
    assert files_in(tmp_path / "cache") == []


@pytest.mark.skipif(
    not all((Path("/usr/share/datasets/fashion-mnist") / n).is_file() for n in fm.FILES),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_real_debian_files(monkeypatch):
    debian = Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download_if_missing=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert y_train.min() == 0 and y_train.max() == 9
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    # the Debian .gz wrappers differ from the official ones, the IDX content does not
    for name in fm.FILES:
        content = gzip.decompress((debian / name).read_bytes())
        assert hashlib.sha256(content).hexdigest() == fm.CONTENT_SHA256[name], name


# --------------------------------------------------------------------------- CIFAR-10


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes, row-major
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def make_cifar(seed: int = 0, n: int = 4):
    """Six batches of ``n`` images each: {file name: (images, labels)}."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        for name in (*c10.TRAIN_FILES, c10.TEST_FILE)
    }


def write_cifar_tar(path: Path, batches, *, extra=(), skip=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = [
        (f"{c10.FOLDER}/{n}", cifar_records(*b)) for n, b in batches.items() if n not in skip
    ]
    members += [(f"{c10.FOLDER}/batches.meta.txt", "\n".join(c10.CLASS_NAMES).encode())]
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [(tarfile.TarInfo(name), data) for name, data in members] + list(extra):
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_cifar_dir(directory: Path, batches) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (directory / name).write_bytes(cifar_records(*batch))


def assert_cifar(result, batches, n: int = 4):
    (x_train, y_train), (x_test, y_test) = result
    assert x_train.shape == (5 * n, 32, 32, 3) and x_test.shape == (n, 32, 32, 3)
    assert y_train.shape == (5 * n,) and y_test.dtype == np.uint8 and x_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train, np.concatenate([batches[f][0] for f in c10.TRAIN_FILES]))
    np.testing.assert_array_equal(y_train, np.concatenate([batches[f][1] for f in c10.TRAIN_FILES]))
    np.testing.assert_array_equal(x_test, batches[c10.TEST_FILE][0])
    np.testing.assert_array_equal(y_test, batches[c10.TEST_FILE][1])


def test_cifar10_from_archive(tmp_path):
    batches = make_cifar()
    write_cifar_tar(tmp_path / "d" / c10.ARCHIVE, batches)
    assert_cifar(load_cifar10(tmp_path / "d", verbose=False), batches)


def test_cifar10_pixel_layout():
    """A record is label, then 1,024 R, 1,024 G, 1,024 B bytes, each plane row-major."""
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 : 1 + 1024] = np.arange(1024) % 256  # R plane: R[0, 1] = 1, R[1, 0] = 32
    record[1 + 1024] = 200  # G[0, 0]
    record[1 + 2048 + 33] = 250  # B[1, 1]
    images, labels = c10._parse_records(record, "record")
    assert labels.tolist() == [7]
    assert images.shape == (1, 32, 32, 3) and images.flags.c_contiguous
    assert images[0, 0, 1, 0] == 1 and images[0, 1, 0, 0] == 32
    assert images[0, 0, 0].tolist() == [0, 200, 0]
    assert images[0, 1, 1].tolist() == [33, 0, 250]


def test_cifar10_extracted_folder_and_plain_files(tmp_path):
    batches = make_cifar(seed=1)
    write_cifar_dir(tmp_path / "a" / c10.FOLDER, batches)
    assert_cifar(load_cifar10(tmp_path / "a"), batches)
    write_cifar_dir(tmp_path / "b", batches)
    assert_cifar(load_cifar10(tmp_path / "b"), batches)


def test_cifar10_env_dir(tmp_path, monkeypatch):
    batches = make_cifar(seed=2)
    write_cifar_tar(tmp_path / "env" / "cifar10" / c10.ARCHIVE, batches)
    monkeypatch.setenv("DISTILLDETECT_DATA", str(tmp_path / "env"))
    assert_cifar(load_cifar10(download_if_missing=False), batches)


def test_cifar10_truncated_batch(tmp_path):
    batches = make_cifar()
    write_cifar_dir(tmp_path, batches)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a whole number of 3073-byte") as info:
        load_cifar10(tmp_path)
    assert str(path) in str(info.value)


def test_cifar10_truncated_archive(tmp_path):
    path = write_cifar_tar(tmp_path / c10.ARCHIVE, make_cifar())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable tar archive") as info:
        load_cifar10(tmp_path)
    assert str(path) in str(info.value)


def test_cifar10_label_out_of_range(tmp_path):
    batches = make_cifar()
    batches[c10.TEST_FILE][1][2] = 10
    write_cifar_tar(tmp_path / c10.ARCHIVE, batches)
    with pytest.raises(ValueError, match="test_batch.bin holds label 10"):
        load_cifar10(tmp_path)


def test_cifar10_archive_missing_member(tmp_path):
    write_cifar_tar(tmp_path / c10.ARCHIVE, make_cifar(), skip=("data_batch_4.bin",))
    with pytest.raises(ValueError, match="does not contain cifar-10-batches-bin/data_batch_4.bin"):
        load_cifar10(tmp_path)


def test_cifar10_unsafe_archive_is_refused(tmp_path):
    link = tarfile.TarInfo(f"{c10.FOLDER}/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    write_cifar_tar(tmp_path / c10.ARCHIVE, make_cifar(), extra=[(link, None)])
    with pytest.raises(ValueError, match="unsafe"):
        load_cifar10(tmp_path)


def test_cifar10_missing_files_message(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    write_cifar_dir(tmp_path / c10.FOLDER, {"data_batch_1.bin": make_cifar()["data_batch_1.bin"]})
    with pytest.raises(ValueError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "does not hold CIFAR-10" in message and str(tmp_path) in message
    assert "lacks data_batch_2.bin" in message and "test_batch.bin" in message
    assert "pickled python version" in message


def test_cifar10_not_found_without_download(tmp_path):
    with pytest.raises(ValueError, match="download_if_missing=False") as info:
        load_cifar10(download_if_missing=False)
    assert str(tmp_path / "cache" / "cifar10") in str(info.value)


def test_cifar10_download_into_cache(tmp_path, server, monkeypatch):
    batches = make_cifar(seed=3)
    body = write_cifar_tar(tmp_path / "served" / c10.ARCHIVE, batches).read_bytes()
    monkeypatch.setattr(c10, "URL", server.add("/kriz/cifar-10-binary.tar.gz", body))
    monkeypatch.setattr(c10, "MD5", hashlib.md5(body).hexdigest())
    monkeypatch.setattr(c10, "SHA256", hashlib.sha256(body).hexdigest())
    assert_cifar(load_cifar10(verbose=False), batches)
    assert files_in(tmp_path / "cache") == [f"cifar10/{c10.ARCHIVE}"]
    assert_cifar(load_cifar10(verbose=False), batches)
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- CIFAR-10-C

ROWS = 2  # rows per severity block in the test files (the release has 10,000)


def write_c10c(directory: Path, names=("fog", "snow"), *, seed: int = 0, rows: int = ROWS):
    """Write ``<name>.npy`` (uint8 (5*rows, 32, 32, 3)) and ``labels.npy``; return the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": rng.integers(0, 10, 5 * rows, dtype=np.uint8)}
    for name in names:
        arrays[name] = rng.integers(0, 256, (5 * rows, 32, 32, 3), dtype=np.uint8)
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)
    return arrays


def block(severity: int, rows: int = ROWS) -> slice:
    return slice((severity - 1) * rows, severity * rows)


def test_corruption_types():
    names = corruption_types_cifar10c()
    assert len(names) == 19 and names == sorted(names) and len(set(names)) == 19
    assert {"brightness", "fog", "zoom_blur", "speckle_noise", "saturate"} <= set(names)
    names.append("mine")
    assert len(corruption_types_cifar10c()) == 19  # a fresh list every call


def test_fetch_one_corruption(tmp_path):
    arrays = write_c10c(tmp_path)
    bunch = fetch_cifar10c("fog", 2, data_dir=tmp_path, verbose=False)
    assert isinstance(bunch, Bunch) and isinstance(bunch, dict)
    assert bunch.data is bunch["data"]
    assert bunch.data.dtype == np.uint8 and bunch.data.shape == (ROWS, 32, 32, 3)
    np.testing.assert_array_equal(bunch.data, arrays["fog"][block(2)])
    assert bunch.target.dtype == np.int64
    np.testing.assert_array_equal(bunch.target, arrays["labels"][block(2)])
    assert bunch.corruption.tolist() == ["fog"] * ROWS
    assert bunch.severity.tolist() == [2] * ROWS
    # the seed's `X.astype('float32') / 255` gives the same values as on alibi's float64 X
    alibi_X = arrays["fog"][block(2)].astype(np.float64)
    np.testing.assert_array_equal(
        bunch.data.astype("float32") / 255, alibi_X.astype("float32") / 255
    )


def test_fetch_list_in_subfolder_and_return_X_y(tmp_path):
    arrays = write_c10c(tmp_path / "CIFAR-10-C", ("fog", "snow", "frost"))
    X, y = fetch_cifar10c(["snow", "fog"], np.int64(5), return_X_y=True, data_dir=tmp_path)
    np.testing.assert_array_equal(
        X, np.concatenate([arrays["snow"][block(5)], arrays["fog"][block(5)]])
    )
    np.testing.assert_array_equal(y, np.tile(arrays["labels"][block(5)], 2))
    bunch = fetch_cifar10c(("frost", "fog"), 1, data_dir=tmp_path, verbose=False)
    assert bunch.corruption.tolist() == ["frost"] * ROWS + ["fog"] * ROWS


def test_fetch_all(tmp_path):
    arrays = write_c10c(tmp_path, corruption_types_cifar10c(), rows=1)
    bunch = fetch_cifar10c("all", 3, data_dir=tmp_path, verbose=False)
    assert bunch.data.shape == (19, 32, 32, 3)
    for i, name in enumerate(corruption_types_cifar10c()):
        np.testing.assert_array_equal(bunch.data[i], arrays[name][2])
    assert bunch.corruption.tolist() == corruption_types_cifar10c()


def test_fetch_memory_maps_without_pickle(tmp_path, monkeypatch):
    write_c10c(tmp_path)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(c10c.np, "load", spy)
    fetch_cifar10c("fog", 4, data_dir=tmp_path, verbose=False)
    assert len(calls) == 2
    assert all(c == {"mmap_mode": "r", "allow_pickle": False} for c in calls)


@pytest.mark.parametrize(
    ("severity", "error"),
    [
        (0, ValueError),
        (6, ValueError),
        (-1, ValueError),
        ("3", TypeError),
        (3.0, TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_fetch_bad_severity(tmp_path, severity, error):
    write_c10c(tmp_path)
    with pytest.raises(error, match="severity must be an integer 1-5"):
        fetch_cifar10c("fog", severity, data_dir=tmp_path)


@pytest.mark.parametrize(
    ("corruption", "error", "match"),
    [
        ("fgo", ValueError, "'fgo' is not a CIFAR-10-C corruption"),
        ("Fog", ValueError, "expected 'all' or one of"),
        (["fog", "all"], ValueError, "'all' is not"),
        ([], ValueError, "at least one"),
        (3, TypeError, "a name, a list of names or 'all'"),
        (["fog", 3], TypeError, "corruption names"),
    ],
)
def test_fetch_bad_corruption(tmp_path, corruption, error, match):
    write_c10c(tmp_path)
    with pytest.raises(error, match=match) as info:
        fetch_cifar10c(corruption, 1, data_dir=tmp_path)
    if error is ValueError and "not a" in match:
        assert ", ".join(corruption_types_cifar10c()) in str(info.value)


def test_fetch_bad_options(tmp_path):
    write_c10c(tmp_path)
    with pytest.raises(ValueError, match="source must be one of 'seldon', 'zenodo'"):
        fetch_cifar10c("fog", 1, data_dir=tmp_path, source="s3")
    with pytest.raises(TypeError, match="return_X_y"):
        fetch_cifar10c("fog", 1, "yes", tmp_path)


def test_fetch_missing_file_names_file_and_directories(tmp_path):
    write_c10c(tmp_path / "c", ("fog",))
    with pytest.raises(ValueError) as info:
        fetch_cifar10c(["fog", "snow"], 1, data_dir=tmp_path / "c")
    message = str(info.value)
    assert "missing snow.npy" in message
    assert str(tmp_path / "c") in message and str(tmp_path / "c" / "CIFAR-10-C") in message


def test_fetch_not_found_without_download(tmp_path):
    with pytest.raises(ValueError, match="download_if_missing=False") as info:
        fetch_cifar10c("fog", 1, download_if_missing=False)
    assert "fog.npy" in str(info.value) and str(tmp_path / "cache") in str(info.value)


def save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=True)


@pytest.mark.parametrize(
    ("name", "array", "match"),
    [
        ("fog", np.zeros((10, 32, 32, 3)), "must hold uint8 images"),
        ("fog", np.zeros((10, 32, 32), np.uint8), "must hold uint8 images"),
        ("fog", np.zeros((12, 32, 32, 3), np.uint8), "multiple of 5"),
        ("fog", np.zeros((15, 32, 32, 3), np.uint8), "has 15 rows but"),
        ("fog", np.asfortranarray(np.zeros((10, 32, 32, 3), np.uint8)), "Fortran order"),
        ("labels", np.zeros((10, 1), np.uint8), "integer labels of shape"),
        ("labels", np.array([object()] * 10), "integer labels of shape"),
        ("labels", np.full(10, 12, np.uint8), r"labels in \[12, 12\]"),
    ],
)
def test_fetch_bad_npy(tmp_path, name, array, match):
    write_c10c(tmp_path)
    save_npy(tmp_path / f"{name}.npy", array)
    with pytest.raises(ValueError, match=match):
        fetch_cifar10c("fog", 1, data_dir=tmp_path)


def test_fetch_truncated_or_not_npy(tmp_path):
    write_c10c(tmp_path)
    path = tmp_path / "fog.npy"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated or damaged") as info:
        fetch_cifar10c("fog", 1, data_dir=tmp_path)
    assert str(path) in str(info.value)
    path.write_bytes(b"PK\x03\x04 a zip, not npy")
    with pytest.raises(ValueError, match="not a valid .npy file"):
        fetch_cifar10c("fog", 1, data_dir=tmp_path)


def write_c10c_tar(path: Path, source_dir: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for npy in sorted(source_dir.glob("*.npy")):
            tar.add(npy, arcname=f"CIFAR-10-C/{npy.name}")
    return path


def test_fetch_from_local_zenodo_archive(tmp_path):
    arrays = write_c10c(tmp_path / "src", ("fog", "snow", "frost"))
    write_c10c_tar(tmp_path / "data" / "CIFAR-10-C.tar", tmp_path / "src")
    bunch = fetch_cifar10c(["snow"], 3, data_dir=tmp_path / "data", verbose=False)
    np.testing.assert_array_equal(bunch.data, arrays["snow"][block(3)])
    # only the needed members were copied out, into the cache
    assert files_in(tmp_path / "cache") == ["CIFAR-10-C/labels.npy", "CIFAR-10-C/snow.npy"]


def goog_md5(body: bytes) -> dict[str, str]:
    import base64

    return {"x-goog-hash": "md5=" + base64.b64encode(hashlib.md5(body).digest()).decode()}


def test_fetch_downloads_per_file_from_seldon(tmp_path, server, monkeypatch):
    arrays = write_c10c(tmp_path / "served", ("fog", "snow"))
    for name in ("fog", "snow", "labels"):
        body = (tmp_path / "served" / f"{name}.npy").read_bytes()
        server.add(f"/cifar10c/{name}.npy", body, headers=goog_md5(body))
    monkeypatch.setattr(c10c, "SELDON_URL", server.url("/cifar10c/{name}.npy"))
    monkeypatch.setattr(c10c, "N_ROWS", 5 * ROWS)
    bunch = fetch_cifar10c("fog", 5, verbose=False)
    np.testing.assert_array_equal(bunch.data, arrays["fog"][block(5)])
    assert sorted(server.requests) == ["/cifar10c/fog.npy", "/cifar10c/labels.npy"]
    X, _ = fetch_cifar10c(["fog", "snow"], 1, return_X_y=True, verbose=False)
    assert sorted(server.requests) == [
        "/cifar10c/fog.npy",
        "/cifar10c/labels.npy",
        "/cifar10c/snow.npy",
    ]
    np.testing.assert_array_equal(X[ROWS:], arrays["snow"][block(1)])
    assert files_in(tmp_path / "cache") == [
        f"CIFAR-10-C/{n}.npy" for n in ("fog", "labels", "snow")
    ]


def test_fetch_seldon_download_with_wrong_shape_is_discarded(tmp_path, server, monkeypatch):
    write_c10c(tmp_path / "served", ("fog",))
    for name in ("fog", "labels"):
        server.add(f"/cifar10c/{name}.npy", (tmp_path / "served" / f"{name}.npy").read_bytes())
    monkeypatch.setattr(c10c, "SELDON_URL", server.url("/cifar10c/{name}.npy"))
    # N_ROWS keeps its real value 50,000: the 10-row test files must be refused
    with pytest.raises(DownloadError, match="has 10 rows; expected 50,000"):
        fetch_cifar10c("fog", 1, verbose=False)
    assert files_in(tmp_path / "cache") == []


def test_fetch_downloads_zenodo_archive(tmp_path, server, monkeypatch):
    arrays = write_c10c(tmp_path / "src", corruption_types_cifar10c(), rows=1)
    body = write_c10c_tar(tmp_path / "CIFAR-10-C.tar", tmp_path / "src").read_bytes()
    monkeypatch.setattr(
        c10c, "ZENODO_URL", server.add("/records/1/files/CIFAR-10-C.tar?download=1", body)
    )
    monkeypatch.setattr(c10c, "ZENODO_MD5", hashlib.md5(body).hexdigest())
    bunch = fetch_cifar10c("pixelate", 4, source="zenodo", verbose=False)
    np.testing.assert_array_equal(bunch.data, arrays["pixelate"][3:4])
    cached = files_in(tmp_path / "cache")
    assert len(cached) == 20 and "CIFAR-10-C.tar" not in cached  # archive deleted after use
    fetch_cifar10c("fog", 1, source="zenodo", verbose=False)
    assert len(server.requests) == 1


def test_fetch_zenodo_checksum_mismatch(tmp_path, server, monkeypatch):
    write_c10c(tmp_path / "src", ("fog",))
    body = write_c10c_tar(tmp_path / "CIFAR-10-C.tar", tmp_path / "src").read_bytes()
    monkeypatch.setattr(c10c, "ZENODO_URL", server.add("/CIFAR-10-C.tar", body))
    with pytest.raises(DownloadError, match=f"expected MD5 {c10c.ZENODO_MD5}"):
        fetch_cifar10c("fog", 1, source="zenodo", verbose=False)
    assert files_in(tmp_path / "cache") == []


def test_bunch_attribute_access():
    b = Bunch(a=1)
    b.c = 3
    assert b["c"] == 3 and b.a == 1 and "c" in dir(b)
    del b.a
    assert "a" not in b
    with pytest.raises(AttributeError):
        _ = b.missing
