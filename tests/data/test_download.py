"""``dapt data download`` against a local HTTP server: resume, checksums, safe extraction, the CoOp layout."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_datasets import make_fake_dataset

from dapt_lightning.arguments import UsageError
from dapt_lightning.data.cli import data_main
from dapt_lightning.data.download import (
    STAGING_DIR,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    extract_archive,
)
from dapt_lightning.data.registry import download_plans, get_dataset_reader, layouts


@dataclass
class FileServer:
    """Serves ``files`` (URL path -> bytes) with HTTP Range support; misbehaves on request."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.requests.append((self.path, self.headers.get("Range")))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            range_header = self.headers.get("Range")
            if range_header and not state.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if self.path in state.cut_once:
                # Promise the whole file, send half, drop the connection: a network cut mid-download.
                state.cut_once.discard(self.path)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


LARGE = 1_500_000
"""Bytes of a download cut halfway that still leaves whole chunks on disk (the downloader writes 512 KiB chunks)."""


def _payload(size: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(size))


def test_interrupted_download_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    body = _payload(LARGE)
    server.files["/f.bin"] = body
    server.cut_once.add("/f.bin")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download_file(f"{server.url}/f.bin", dest, retries=0, progress=False)
    (part,) = [path for path in tmp_path.iterdir() if path.name.endswith(".part")]
    received = part.stat().st_size
    assert 0 < received < len(body) and not dest.exists()

    md5 = hashlib.md5(body).hexdigest()
    download_file(f"{server.url}/f.bin", dest, md5=md5, retries=0, progress=False)
    assert dest.read_bytes() == body and not part.exists()
    assert server.requests[-1] == ("/f.bin", f"bytes={received}-")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f.bin"]  # nothing left beside it


def test_retry_resumes_within_one_call(server: FileServer, tmp_path: Path) -> None:
    body = _payload(LARGE)
    server.files["/g.bin"] = body
    server.cut_once.add("/g.bin")
    sha = hashlib.sha256(body).hexdigest()
    download_file(f"{server.url}/g.bin", tmp_path / "g.bin", sha256=sha, retries=2, progress=False)
    assert (tmp_path / "g.bin").read_bytes() == body
    first, resumed = server.requests
    assert first == ("/g.bin", None) and resumed[1].startswith("bytes=") and resumed[1] != "bytes=0-"


def test_server_ignoring_range_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    body = _payload(LARGE)
    server.files["/h.bin"] = body
    server.cut_once.add("/h.bin")
    with pytest.raises(DownloadError):
        download_file(f"{server.url}/h.bin", tmp_path / "h.bin", retries=0, progress=False)
    server.ignore_range = True  # the next call asks for the rest, and gets the whole file from the start
    download_file(f"{server.url}/h.bin", tmp_path / "h.bin", md5=hashlib.md5(body).hexdigest(), progress=False)
    assert (tmp_path / "h.bin").read_bytes() == body


def test_a_web_page_instead_of_the_file_is_named(server: FileServer, tmp_path: Path) -> None:
    server.files["/quota.bin"] = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>"
    with pytest.raises(DownloadError, match="returned a web page instead of the file"):
        download_file(f"{server.url}/quota.bin", tmp_path / "quota.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_deletes_part_and_names_url(server: FileServer, tmp_path: Path) -> None:
    body = _payload(1000)
    server.files["/c.bin"] = body
    url = f"{server.url}/c.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        download_file(url, tmp_path / "c.bin", md5=wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and hashlib.md5(body).hexdigest() in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_http_error_names_url(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"{server.url}/absent.bin: HTTP 404"):
        download_file(f"{server.url}/absent.bin", tmp_path / "absent.bin", progress=False)


# --- extraction -----------------------------------------------------------------------------------------------


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/escaped_abs.txt", "ok/../../escaped.txt"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_extraction_refuses_path_traversal(tmp_path: Path, evil: str, kind: str) -> None:
    archive = tmp_path / f"evil.{kind}"
    archive.write_bytes((_tar if kind == "tar" else _zip)({"good.txt": b"fine", evil: b"pwned"}))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(archive, dest)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped_abs.txt").exists()


def test_extraction_skips_links_and_strips_prefix(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    members = {"top/data/images/1.jpg": b"1", "top/data/variants.txt": b"v", "top/README": b"r"}
    archive.write_bytes(_tar(members, links={"top/data/link": "/etc/passwd"}))
    with pytest.warns(UserWarning, match="skipped 1 link"):
        written = extract_archive(archive, tmp_path / "out", strip="top/data/")
    assert written == 2
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "images/1.jpg",
        "variants.txt",
    ]
    assert not (tmp_path / "out/link").exists()


# --- whole datasets through a mirror --------------------------------------------------------------------------


def _tar_folder(folder: Path, arcname_root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname=folder.relative_to(arcname_root).as_posix())
    return buffer.getvalue()


def _same_items(a, b, root_a: Path, root_b: Path) -> bool:  # noqa: ANN001 - DatasetSplits
    def norm(splits, root: Path) -> list:  # noqa: ANN001
        return [
            (i.impath.replace(str(root), ""), i.label, i.classname) for i in splits.train + splits.val + splits.test
        ]

    return norm(a, root_a) == norm(b, root_b)


def test_download_oxford_pets_from_mirror_into_coop_layout(server: FileServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_fake_dataset("oxford_pets", source)
    pets = source / "oxford_pets"
    server.files["/oxford_pets/images.tar.gz"] = _tar_folder(pets / "images", pets)
    server.files["/oxford_pets/annotations.tar.gz"] = _tar_folder(pets / "annotations", pets)
    server.files["/oxford_pets/split_zhou_OxfordPets.json"] = (pets / "split_zhou_OxfordPets.json").read_bytes()
    server.cut_once.add("/oxford_pets/images.tar.gz")

    root = tmp_path / "data"
    report = download_dataset("oxford_pets", root, mirror=server.url + "/", verify=False, progress=False)
    assert report.fetched == ["images.tar.gz", "annotations.tar.gz", "split_zhou_OxfordPets.json"]
    assert _same_items(get_dataset_reader("oxford_pets")(root), get_dataset_reader("oxford_pets")(source), root, source)
    assert not list((root / STAGING_DIR / "oxford_pets").glob("*.tar.gz"))  # archives removed after extraction

    count = len(server.requests)
    again = download_dataset("oxford_pets", root, mirror=server.url, verify=False, progress=False)
    assert again.fetched == [] and len(again.skipped) == 3 and len(server.requests) == count


def test_published_checksums_are_enforced(server: FileServer, tmp_path: Path) -> None:
    server.files["/oxford_pets/images.tar.gz"] = _tar({"images/a.jpg": b"fake"})
    with pytest.raises(ChecksumError, match="5c4f3ee8e5d25df40f4fd59a7f44e54c"):
        download_dataset("oxford_pets", tmp_path, mirror=server.url, progress=False)
    assert not (tmp_path / "oxford_pets").exists()


def test_cli_download_fgvc_strips_data_folder_and_uses_env_mirror(
    server: FileServer, tmp_path: Path, monkeypatch, capsys
) -> None:
    source = tmp_path / "source"
    make_fake_dataset("fgvc_aircraft", source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(source / "fgvc_aircraft", arcname="fgvc-aircraft-2013b/data")
        tf.addfile(tarfile.TarInfo("fgvc-aircraft-2013b/README.md"), io.BytesIO(b""))
    server.files["/fgvc_aircraft/fgvc-aircraft-2013b.tar.gz"] = buffer.getvalue()
    monkeypatch.setenv("DAPT_DOWNLOAD_MIRROR", server.url)
    root = tmp_path / "data"
    assert data_main(["download", "fgvc_aircraft", "--root", str(root), "--no_verify", "--no_progress"]) == 0
    assert "fgvc_aircraft: fetched fgvc-aircraft-2013b.tar.gz" in capsys.readouterr().out
    assert not (root / "fgvc_aircraft/README.md").exists()
    got, want = get_dataset_reader("fgvc_aircraft")(root), get_dataset_reader("fgvc_aircraft")(source)
    assert _same_items(got, want, root, source)


def test_cli_download_copies_classnames_and_prints_manual_steps(server: FileServer, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet/classnames.txt").write_text("n01440764 tench\n")
    assert data_main(["download", "imagenet_sketch", "--root", str(root), "--mirror", server.url, "--no_progress"]) == 0
    assert (root / "imagenet-sketch/classnames.txt").read_text() == "n01440764 tench\n"
    assert server.requests == []
    assert f"{root}/imagenet-sketch/images" in capsys.readouterr().out
    assert data_main(["download", "caltech101", "--root", str(root), "--mirror", server.url, "--retries", "0"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_extraction_follows_a_symlinked_dataset_folder(tmp_path: Path) -> None:
    # CoOp's DATASETS.md suggests symlinking datasets stored elsewhere into the data root.
    elsewhere = tmp_path / "big_disk/food-101"
    elsewhere.mkdir(parents=True)
    root = tmp_path / "data"
    root.mkdir()
    (root / "food-101").symlink_to(elsewhere)
    archive = tmp_path / "food.tar.gz"
    archive.write_bytes(_tar({"food-101/images/pie/1.jpg": b"1"}))
    assert extract_archive(archive, root) == 1
    assert (elsewhere / "images/pie/1.jpg").read_bytes() == b"1"


def test_only_datasets_with_a_download_plan_can_be_downloaded(tmp_path: Path) -> None:
    # custom and synthetic are registered but have nothing to fetch: both the CLI and the function say so.
    assert "synthetic" not in download_plans() and set(download_plans()) == set(layouts())
    with pytest.raises(ValueError, match=r"unknown dataset 'synthetic'; choose one of imagenet, caltech101"):
        download_dataset("synthetic", tmp_path, progress=False)
    with pytest.raises(UsageError):
        data_main(["download", "custom", "--root", str(tmp_path)])
