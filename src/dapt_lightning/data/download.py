"""``dapt data download``: fetch the datasets that have public direct-download URLs into the CoOp layout.

The transfer is gdown's (any URL, Google Drive's confirmation pages, resuming a partial file with HTTP ``Range``
across retries and runs); pooch checks the finished file against its published MD5/SHA-256 and puts it in place
atomically. Archives are extracted here, member by member, refusing any path that would land outside the target.
Every URL can be redirected to a mirror (``mirror=`` or ``$DAPT_DOWNLOAD_MIRROR``) that serves
``<mirror>/<dataset>/<filename>``, which is also how the tests point the code at a local server.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import gdown
import pooch
import requests

from dapt_lightning.data.registry import download_plans

MIRROR_ENV = "DAPT_DOWNLOAD_MIRROR"
"""Environment variable naming a mirror base URL (``<mirror>/<dataset>/<filename>``)."""

STAGING_DIR = ".dapt_downloads"
"""Folder under the data root holding partial downloads, archives and completion markers."""

_CHUNK = 1 << 20
_WEB_PAGE = (b"<!doctype html", b"<html")


class DownloadError(RuntimeError):
    """A download failed (HTTP error, interrupted after every retry, HTML page instead of a file)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder."""


@dataclass
class DownloadReport:
    """What one ``download_dataset`` call did."""

    name: str
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    manual: str = ""


def partial_files(dest: Path) -> list[Path]:
    """The partial downloads of ``dest`` that a later call resumes (gdown's ``<name>XXXXXXXX.part`` beside it)."""
    return sorted(dest.parent.glob(f"{dest.name}????????.part"))


def download_file(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial file left by an earlier call, and check its checksum.

    Args:
        url: http(s) URL (a Google Drive link too).
        dest: Final path; written only once the download is complete and verified.
        md5: Expected MD5 (hex), if known.
        sha256: Expected SHA-256 (hex), if known.
        retries: Extra attempts after a dropped connection or a server error; each resumes where the last stopped.
        timeout: Seconds to wait for the server between bytes.
        progress: Show a progress bar.

    Raises:
        DownloadError: HTTP error, a web page instead of the file, or the connection kept dropping (the partial
            file stays, to resume later).
        ChecksumError: the finished file does not match ``md5``/``sha256`` (it is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(dest.name + ".staged")  # a stable name, so that gdown finds its partial file again
    known_hash = f"sha256:{sha256}" if sha256 else f"md5:{md5}" if md5 else None

    def fetch(source: str) -> None:
        gdown.download(source, str(staged), quiet=not progress, resume=True, retries=retries, timeout=timeout)

    def transfer(source: str, output: str, _pooch: object) -> None:
        # pooch hands over a fresh temporary name each time; gdown resumes only under the same name.
        try:
            try:
                fetch(source)
            except gdown.exceptions.DownloadError as error:
                if "byte range" not in str(error):
                    raise
                for partial in partial_files(staged):  # a server that cannot resume: start over, once
                    partial.unlink()
                fetch(source)
        except requests.HTTPError as error:
            response = error.response
            status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(error)
            raise DownloadError(f"could not download {source}: {status}") from error
        except (requests.RequestException, gdown.exceptions.DownloadError, OSError) as error:
            raise DownloadError(
                f"could not download {source} after {retries + 1} attempt(s) ({error}); the partial file "
                f"{(partial_files(staged) or [staged])[0]} is kept: run the command again to resume"
            ) from error
        with open(staged, "rb") as handle:
            if handle.read(64).lstrip().lower().startswith(_WEB_PAGE):
                staged.unlink()
                raise DownloadError(
                    f"{source} returned a web page instead of the file (a login, quota or virus-scan page); "
                    f"download it by hand and save it as {dest}"
                )
        os.replace(staged, output)

    pooch.get_logger().setLevel("WARNING")  # its "Downloading ..." lines: the progress bar says so
    try:
        pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent, downloader=transfer)
    except ValueError as error:  # pooch: the file's hash is not the known one; it has deleted the file
        if "hash" not in str(error):
            raise
        algorithm, expected = known_hash.split(":", 1)
        got = re.search(r"but got (\w+)", str(error))
        raise ChecksumError(
            f"{algorithm} mismatch for {url}: expected {expected}, got {got.group(1) if got else 'another hash'}; the "
            "download was deleted, run the command again (or check the mirror)"
        ) from None
    return dest


def _safe_target(dest: Path, name: str, strip: str, archive: Path) -> Path | None:
    """Where member ``name`` goes under ``dest`` (``None`` to skip it); raise if it would escape ``dest``."""
    posix = name.replace("\\", "/")
    if strip:
        if not posix.startswith(strip):
            return None
        posix = posix[len(strip) :]
    rel = PurePosixPath(posix)
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {dest}; nothing more extracted")
    if not rel.parts or rel.parts == (".",):
        return None
    # No resolve() check: we never create links, and CoOp's DATASETS.md suggests symlinking dataset folders into
    # the data root, which a resolved-path check would wrongly reject.
    return dest.joinpath(*rel.parts)


def extract_archive(archive: Path, dest: Path, strip: str = "") -> int:
    """Extract a tar (any compression) or zip archive into ``dest``, member by member; return the files written.

    Only regular files and folders are written; links and devices are skipped (no dataset needs them), so a link
    cannot be used to write outside ``dest``. A member whose path is absolute or climbs out with ``..`` aborts the
    extraction with :class:`UnsafeArchiveError`.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    skipped_links = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = _safe_target(dest, info.filename, strip, archive)
                if target is None:
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written += 1
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                target = _safe_target(dest, member.name, strip, archive)
                if target is None:
                    continue
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                    written += 1
                else:
                    skipped_links += 1
    else:
        raise DownloadError(f"{archive} is neither a tar nor a zip archive; delete it and download it again")
    if skipped_links:
        warnings.warn(f"{archive}: skipped {skipped_links} link/special member(s)", stacklevel=2)
    return written


def resolve_mirror(mirror: str | None) -> str | None:
    """The mirror to use: the argument, else ``$DAPT_DOWNLOAD_MIRROR``, else none (the public URLs)."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    return mirror.rstrip("/") if mirror else None


def download_dataset(
    name: str,
    root: Path,
    mirror: str | None = None,
    verify: bool = True,
    keep_archives: bool = False,
    retries: int = 3,
    progress: bool = True,
) -> DownloadReport:
    """Download and extract what the download plan of ``name`` lists into the data root ``root`` (CoOp layout).

    Finished resources leave a marker in ``ROOT/.dapt_downloads/NAME/``, so running it again skips them and resumes
    an interrupted file. Steps that cannot be automated come back in ``DownloadReport.manual``.

    Args:
        name: Registered dataset name (``oxford_pets``).
        root: Data root (the folder holding every dataset's folder).
        mirror: Base URL serving ``<mirror>/<name>/<filename>``; default ``$DAPT_DOWNLOAD_MIRROR`` or the public URLs.
        verify: Check the published checksums (a mirror serving other bytes, e.g. test fakes, needs ``False``).
        keep_archives: Keep the downloaded archives after extracting them.
        retries: Retries per file after a dropped connection.
        progress: Show progress bars.
    """
    plans = download_plans()
    if name not in plans:
        raise ValueError(f"dapt data download: unknown dataset {name!r}; choose one of {', '.join(plans)}")
    plan = plans[name]
    root = Path(root).expanduser()
    base = resolve_mirror(mirror)
    staging = root / STAGING_DIR / name
    report = DownloadReport(name, manual=plan.manual)
    for res in plan.resources:
        marker = staging / f"{res.filename}.done"
        target = root / res.dest
        if marker.exists() or (not res.extract and target.exists()):
            report.skipped.append(res.filename)
            continue
        if res.copy_from and (root / res.copy_from).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / res.copy_from, target)
            report.fetched.append(res.filename)
            continue
        url = f"{base}/{name}/{res.filename}" if base else res.source_url()
        checks = {"md5": res.md5, "sha256": res.sha256} if verify else {}
        path = staging / res.filename
        try:
            download_file(url, path, retries=retries, progress=progress, **checks)
        except DownloadError as err:
            if res.drive_id and not base:
                raise DownloadError(
                    f"{err}\nGoogle Drive refused the direct download of {res.filename}: open "
                    f"{res.page_url()} in a browser and save the file as {target if not res.extract else path}"
                ) from err
            raise
        if res.extract:
            extract_archive(path, target, strip=res.strip)
            if not keep_archives:
                path.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(url + "\n", encoding="utf-8")
        report.fetched.append(res.filename)
    return report
