"""The one downloader (cache, checksums, atomic writes) against a local HTTP server, and safe tars.

Never touches the internet: every URL points at a ``http.server`` on 127.0.0.1 (port 0, in a
thread) that serves bytes the test wrote, and can lie about checksums or cut a transfer short.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tarfile
from pathlib import Path

import pytest

from distilldetect.datasets import DownloadError, download, get_cache_dir
from distilldetect.datasets import _download as dl


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, also set as $DISTILLDETECT_CACHE."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DISTILLDETECT_CACHE", str(path))
    return path


BODY = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
SHA256 = hashlib.sha256(BODY).hexdigest()
MD5 = hashlib.md5(BODY).hexdigest()


def files_in(directory: Path) -> list[str]:
    """Every file under ``directory`` (hidden temporary files included)."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- success and reuse


def test_download_success_then_cache_reuse_makes_no_request(server, cache):
    url = server.add("/data/file.bin", BODY)
    path = download(url, subdir="things", sha256=SHA256, md5=MD5, verbose=False)
    assert path == cache / "things" / "file.bin"
    assert path.read_bytes() == BODY
    assert server.requests == ["/data/file.bin"]
    again = download(url, subdir="things", sha256=SHA256, md5=MD5, verbose=False)
    assert again == path
    assert server.requests == ["/data/file.bin"]  # served from the cache
    assert files_in(cache) == ["things/file.bin"]  # no temporary file left


def test_force_downloads_again(server, cache):
    url = server.add("/f.bin", BODY)
    download(url, sha256=SHA256, verbose=False)
    download(url, sha256=SHA256, verbose=False, force=True)
    assert server.requests == ["/f.bin", "/f.bin"]


def test_cache_dir_argument_wins_over_environment(server, cache, tmp_path):
    url = server.add("/f.bin", BODY)
    other = tmp_path / "other"
    path = download(url, "renamed.bin", cache_dir=other, md5=MD5, verbose=False)
    assert path == other / "renamed.bin"
    assert files_in(cache) == []


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILLDETECT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_cache_dir() == tmp_path / ".cache" / "distilldetect"
    monkeypatch.setenv("DISTILLDETECT_CACHE", str(tmp_path / "env"))
    assert get_cache_dir() == tmp_path / "env"
    assert get_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_damaged_cached_file_is_downloaded_again(server, cache, caplog):
    url = server.add("/f.bin", BODY)
    path = download(url, sha256=SHA256, verbose=False)
    path.write_bytes(b"bit rot")
    with caplog.at_level(logging.WARNING, logger="distilldetect"):
        again = download(url, sha256=SHA256, verbose=False)
    assert again.read_bytes() == BODY
    assert len(server.requests) == 2
    assert "damaged" in caplog.text


def test_mirrors_are_tried_in_order(server, cache, caplog):
    good = server.add("/good/f.bin", BODY)
    with caplog.at_level(logging.WARNING, logger="distilldetect"):
        path = download([server.url("/missing/f.bin"), good], sha256=SHA256, verbose=False)
    assert path.read_bytes() == BODY
    assert server.requests == ["/missing/f.bin", "/good/f.bin"]
    assert "404" in caplog.text


def test_progress_bar_only_when_verbose(server, cache, capsys):
    url = server.add("/f.bin", BODY)
    download(url, md5=MD5, verbose=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    download(url, md5=MD5, verbose=True, force=True)
    captured = capsys.readouterr()
    assert captured.out == ""  # the library never prints; tqdm writes to stderr
    assert "f.bin" in captured.err


# --------------------------------------------------------------------------- failures


def test_wrong_checksum_raises_and_leaves_nothing(server, cache):
    url = server.add("/f.bin", BODY)
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download(url, sha256=wrong, verbose=False)
    message = str(info.value)
    assert url in message and wrong in message and SHA256 in message
    assert "nothing was saved" in message
    assert files_in(cache) == []


def test_wrong_md5_raises_and_leaves_nothing(server, cache):
    url = server.add("/f.bin", BODY)
    with pytest.raises(DownloadError, match="expected MD5 " + "f" * 32 + ", got " + MD5):
        download(url, md5="F" * 32, verbose=False)
    assert files_in(cache) == []


def test_connection_cut_mid_file_raises_and_leaves_nothing(server, cache):
    url = server.add("/f.bin", BODY, cut=True)
    with pytest.raises(DownloadError) as info:
        download(url, sha256=SHA256, verbose=False)
    message = str(info.value)
    assert url in message and "interrupted" in message
    assert f"of {len(BODY):,} bytes" in message
    assert files_in(cache) == []


def test_404_raises_and_leaves_nothing(server, cache):
    with pytest.raises(DownloadError, match=r"HTTP 404") as info:
        download(server.url("/nope.bin"), sha256=SHA256, verbose=False)
    assert server.url("/nope.bin") in str(info.value)
    assert files_in(cache) == []


def test_connection_refused_raises(cache):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(DownloadError, match="could not download") as info:
        download(url, sha256=SHA256, verbose=False, timeout=5)
    assert url in str(info.value)
    assert files_in(cache) == []


def test_all_mirrors_failing_lists_each(server, cache):
    urls = [server.url("/a/f.bin"), server.add("/b/f.bin", BODY, cut=True)]
    with pytest.raises(DownloadError) as info:
        download(urls, sha256=SHA256, verbose=False)
    message = str(info.value)
    assert "any of its 2 sources" in message
    assert "HTTP 404" in message and "interrupted" in message
    assert files_in(cache) == []


def test_server_reported_md5_is_verified(server, cache):
    good = base64.b64encode(hashlib.md5(BODY).digest()).decode()
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    ok_url = server.add("/ok.bin", BODY, headers={"x-goog-hash": f"crc32c=AAAAAA==,md5={good}"})
    assert download(ok_url, verbose=False).read_bytes() == BODY
    bad_url = server.add("/bad.bin", BODY, headers={"x-goog-hash": f"md5={bad}"})
    with pytest.raises(DownloadError, match="x-goog-hash"):
        download(bad_url, verbose=False)
    assert files_in(cache) == ["ok.bin"]


def test_validator_failure_raises_and_leaves_nothing(server, cache):
    url = server.add("/f.bin", BODY)

    def validate(path: Path) -> None:
        assert path.name.endswith(".part") and path.parent == cache  # runs on the temporary file
        raise ValueError("not the expected format")

    with pytest.raises(DownloadError, match="not valid: not the expected format"):
        download(url, validate=validate, verbose=False)
    assert files_in(cache) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": 3}, TypeError, "url must be"),
        ({"url": []}, TypeError, "url must be"),
        ({"url": "ftp://example.org/f"}, ValueError, "http:// or https://"),
        ({"url": "http://127.0.0.1/"}, ValueError, "filename must be given"),
        ({"url": "http://127.0.0.1/f", "filename": "../f"}, ValueError, "filename must be"),
        ({"url": "http://127.0.0.1/f", "subdir": "a/../.."}, ValueError, "subdir must be"),
        ({"url": "http://127.0.0.1/f", "sha256": "abc"}, ValueError, "sha256 must be 64"),
        ({"url": "http://127.0.0.1/f", "md5": 5}, TypeError, "md5 must be"),
        ({"url": "http://127.0.0.1/f", "validate": "yes"}, TypeError, "validate must be"),
        ({"url": "http://127.0.0.1/f", "timeout": 0}, ValueError, "timeout must be"),
        ({"url": "http://127.0.0.1/f", "cache_dir": 1.5}, TypeError, "cache_dir must be"),
    ],
)
def test_bad_arguments(cache, kwargs, error, match):
    with pytest.raises(error, match=match):
        download(**kwargs, verbose=False)
    assert files_in(cache) == []


# --------------------------------------------------------------------------- safe tar reading


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def test_iter_tar_files_reads_wanted_members(tmp_path):
    archive = make_tar(
        tmp_path / "a.tar.gz", [regular("./d/x.bin", b"xx"), regular("d/y.bin", b"yyy")]
    )
    assert dict(dl.iter_tar_files(archive, ["d/y.bin", "d/x.bin"])) == {
        "d/x.bin": b"xx",
        "d/y.bin": b"yyy",
    }
    with pytest.raises(ValueError, match="does not contain d/z.bin"):
        list(dl.iter_tar_files(archive, ["d/z.bin"]))


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (regular("/etc/evil", b"x"), "absolute path"),
        (regular("d/../../evil", b"x"), r"'\.\.'"),
        (special("d/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (special("d/hard", tarfile.LNKTYPE, "d/x.bin"), "link"),
        (special("d/dev", tarfile.CHRTYPE), "device"),
        (special("d/fifo", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, why):
    archive = make_tar(tmp_path / "a.tar", [regular("d/x.bin", b"x"), member], mode="w")
    with pytest.raises(ValueError, match=f"unsafe .*{why}"):
        list(dl.iter_tar_files(archive, ["d/x.bin"]))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"unsafe .*{why}"):
        dl.extract_tar_members(archive, {"d/x.bin": out / "x.bin"}, verbose=False)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_extract_tar_members_is_atomic_per_file(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [regular("d/x.bin", b"x" * 5000)], mode="w")
    out = tmp_path / "out"
    dl.extract_tar_members(archive, {"d/x.bin": out / "x.bin"}, verbose=False)
    assert (out / "x.bin").read_bytes() == b"x" * 5000
    with pytest.raises(ValueError, match="does not contain d/missing.bin"):
        dl.extract_tar_members(archive, {"d/missing.bin": out / "m.bin"}, verbose=False)
    # a truncated archive: the partly copied member must not be left behind
    truncated = tmp_path / "t.tar"
    truncated.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated"):
        dl.extract_tar_members(truncated, {"d/x.bin": tmp_path / "t" / "x.bin"}, verbose=False)
    assert files_in(tmp_path / "t") == []


def test_not_a_tar_archive(tmp_path):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"\x1f\x8b definitely not gzip")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        list(dl.iter_tar_files(bogus, ["x"]))
