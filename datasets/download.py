"""python -m datasets.download [data.root=data/coco] [splits=[train,val]] [base_url=...]

Fetch the COCO 2017 archives (image zips and ``annotations_trainval2017.zip``) into ``data.root``
and extract them there, so that ``data.root`` holds ``annotations/``, ``train2017/``, ``val2017/``.

Every step can be interrupted and rerun:

* a transfer streams into ``<name>.part`` and resumes from its length with an HTTP ``Range``
  request; only a file whose size and MD5 match the table below is renamed to ``<name>``, so a
  file under its final name is always complete;
* transient failures (a connection refused, reset or cut short, a timeout, HTTP 5xx) are retried
  ``retries`` times, waiting ``backoff`` seconds, then twice as long each time (at most a
  minute); a cut keeps the ``.part`` and the next attempt resumes it. A server that sends no
  ``Content-Length`` cannot say it was cut: a body shorter than the table's size is taken for a
  cut (kept and resumed), never for a wrong table;
* a verified archive gets a stamp (``.<name>.verified``: size, mtime, md5) so reruns skip the
  re-hash; a file changed since then is re-hashed, and a corrupt one is fetched again;
* extraction checks every member first (no absolute path, no ``..``, no symlink: nothing may land
  outside ``data.root``), writes each file through a temp name, and stamps ``.<name>.extracted``
  at the end; an archive already extracted is skipped.

Checksums: the MD5 and byte size of each official archive are recorded in ``COCO_FILES``; the
config's ``files`` table (keyed by file name) replaces it, which is how tests serve their own zips.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from datasets.config import as_list, real_number, whole_number
from datasets.errors import UsageError, UserError, user_errors
from datasets.files import write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read/write; large enough that Python overhead is negligible
MAX_BACKOFF = 60.0  # seconds: the longest wait between two attempts


@dataclass(frozen=True)
class RemoteFile:
    """One archive: its path under the base URL, MD5 and size in bytes (None = not checked)."""

    name: str
    path: str
    md5: str | None
    size: int | None


# MD5s as published alongside the COCO 2017 download links; sizes are the servers' Content-Length.
COCO_FILES: dict[str, RemoteFile] = {
    "train2017.zip": RemoteFile(
        "train2017.zip", "zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", 19336861798
    ),
    "val2017.zip": RemoteFile(
        "val2017.zip", "zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", 815585330
    ),
    "annotations_trainval2017.zip": RemoteFile(
        "annotations_trainval2017.zip",
        "annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c",
        252907541,
    ),
}

# which archives each split selects
SPLIT_FILES = {
    "train": ["train2017.zip"],
    "val": ["val2017.zip"],
    "annotations": ["annotations_trainval2017.zip"],
}


class DownloadError(UserError):
    """A transfer failed (HTTP error, network error, full disk, checksum mismatch)."""


class UnsafeArchiveError(UserError):
    """An archive member would land outside the destination folder."""


class _Transient(DownloadError):
    """A failure worth another attempt: connection refused/reset/cut, timeout, HTTP 5xx."""


class _ChecksumMismatch(DownloadError):
    pass


class _ConnectionLost(_Transient):
    pass


# --------------------------------------------------------------------------- hashing / stamps
def md5_file(path: Path, desc: str | None = None) -> str:
    """MD5 hex digest of a file, with a progress bar for large files."""
    h = hashlib.md5()
    total = path.stat().st_size
    with open(path, "rb") as f, _bar(total, desc or f"md5 {path.name}", total > 64 * CHUNK) as bar:
        while block := f.read(CHUNK):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _bar(total: int | None, desc: str, show: bool = True) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show
    )


def _stamp_path(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _file_state(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_verified(path: Path, spec: RemoteFile, rehash: bool = True) -> bool:
    """True when ``path`` has the expected size and MD5 (trusting a fresh stamp over re-hashing)."""
    if not path.is_file():
        return False
    state = _file_state(path)
    if spec.size is not None and state["size"] != spec.size:
        return False
    stamp = _read_stamp(_stamp_path(path, "verified"))
    if stamp and stamp.get("md5") == spec.md5 and {k: stamp.get(k) for k in state} == state:
        return True
    if not rehash:
        return False
    if spec.md5 is not None and md5_file(path) != spec.md5:
        return False
    write_json(_stamp_path(path, "verified"), {**state, "md5": spec.md5})
    return True


# --------------------------------------------------------------------------- transfer
def _open_part(path: Path, mode: str) -> BinaryIO:
    """Open the ``.part`` file (a seam for tests that simulate a full disk)."""
    return open(path, mode)  # noqa: SIM115 - caller closes


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {folder} for {what}: need {needed / 2**30:.2f} GiB more, "
            f"{free / 2**30:.2f} GiB free"
        )


def _request(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "pafpose-download/1"})
    if start > 0:
        req.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:
            return e  # range not satisfiable: the .part is already as long as the file
        kind = _Transient if 500 <= e.code < 600 else DownloadError  # 5xx: the server's trouble
        raise kind(f"HTTP {e.code} {e.reason} fetching {url}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        # refused/reset/timed out: a server restarting or a network blip; a name that does not
        # resolve or a bad URL will not get better by waiting
        transient = isinstance(reason, (ConnectionError, TimeoutError, http.client.HTTPException))
        raise (_Transient if transient else DownloadError)(f"cannot fetch {url}: {reason}") from e


def fetch(url: str, dest: Path, spec: RemoteFile, timeout: float = 60.0) -> None:
    """Download ``url`` into ``dest`` (resuming ``dest.part``), verify size and MD5, then rename.

    Raises DownloadError on HTTP/network failure, a full disk, or a checksum mismatch; the
    partial data stays in ``dest.part`` (never under the final name) so a rerun resumes.
    """
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if spec.size is not None and start > spec.size:
        log.warning("%s is longer than %s expected; starting over", part, spec.size)
        part.unlink()
        start = 0
    resp = _request(url, start, timeout)
    promised = None  # bytes the server said the file has (start + Content-Length)
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        if status == 416:
            log.info("%s: server has no bytes past %d; verifying what we have", dest.name, start)
            promised = start
        else:
            if start > 0 and status != 206:
                log.warning("%s: server ignored the Range request; restarting", dest.name)
                start = 0
            if status == 206:
                crange = resp.headers.get("Content-Range", "")
                if not crange.startswith(f"bytes {start}-"):
                    raise DownloadError(
                        f"{url}: asked for bytes {start}- but got Content-Range {crange!r}"
                    )
            length = resp.headers.get("Content-Length")
            promised = start + int(length) if length is not None else None
            total = spec.size or promised
            if total is not None:
                _check_free_space(dest.parent, total - start, dest.name)
            written = _stream(resp, part, start, total, url)
            if promised is not None and written < promised:
                # http.client returns a short read, not an error, when the peer hangs up early
                raise _ConnectionLost(
                    f"{url}: connection lost after {written} of {promised} bytes; rerun to resume"
                )
    size = part.stat().st_size
    if spec.size is not None and size < spec.size and promised is None:
        # no Content-Length: a cut connection looks like a clean end; keep what came
        raise _ConnectionLost(
            f"{url}: the transfer stopped after {size} of {spec.size} bytes (the server sent no "
            f"Content-Length); kept {part.name}: rerun to resume"
        )
    if spec.size is not None and size != spec.size:
        # the server promised this length and delivered it: its file differs from the table
        part.unlink()
        raise DownloadError(
            f"{url}: the server's file has {size} bytes, {spec.size} expected; check base_url and"
            " the files table"
        )
    digest = md5_file(part, desc=f"verify {dest.name}")
    if spec.md5 is not None and digest != spec.md5:
        part.unlink()
        raise _ChecksumMismatch(f"{dest.name}: md5 {digest} != expected {spec.md5}")
    os.replace(part, dest)
    write_json(_stamp_path(dest, "verified"), {**_file_state(dest), "md5": spec.md5})


def _stream(resp: Any, part: Path, start: int, total: int | None, url: str) -> int:
    """Append the response body to ``part``; returns the file's length afterwards."""
    mode = "ab" if start > 0 else "wb"
    written = start
    try:
        with _open_part(part, mode) as f, _bar(total, part.name[: -len(".part")]) as bar:
            bar.update(start)
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _ConnectionLost(
                        f"{url}: connection lost after {written} bytes ({e}); rerun to resume"
                    ) from e
                if not block:
                    break
                f.write(block)
                written += len(block)
                bar.update(len(block))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = part.stat().st_size if part.exists() else written
            raise DownloadError(
                f"disk full writing {part} after {kept} bytes"
                f"{f' of {total}' if total else ''}: free space, then rerun to resume"
            ) from e
        raise DownloadError(f"cannot write {part}: {e}") from e
    return written


def ensure_file(
    base_url: str,
    root: Path,
    spec: RemoteFile,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Make ``root/spec.name`` a verified copy; fetch (resuming) and re-fetch if corrupt.

    ``retries`` bounds the extra attempts after a transient failure (resumed from the ``.part``
    after ``backoff`` seconds, doubling each time up to ``MAX_BACKOFF``) or a checksum mismatch
    (fetched again from byte 0 at once).
    """
    dest = root / spec.name
    if dest.exists():
        if is_verified(dest, spec):
            log.info("%s: complete and verified, skipping download", spec.name)
            return dest
        log.warning("%s: size or md5 mismatch, fetching again", dest)
        dest.unlink()
        _stamp_path(dest, "verified").unlink(missing_ok=True)
        _stamp_path(dest, "extracted").unlink(missing_ok=True)
    url = base_url.rstrip("/") + "/" + spec.path.lstrip("/")
    for attempt in range(retries + 1):
        try:
            fetch(url, dest, spec, timeout=timeout)
            return dest
        except (_ChecksumMismatch, _Transient) as e:
            if attempt == retries:
                raise DownloadError(f"{e} (gave up after {retries + 1} attempts)") from e
            # a lost connection resumes from the .part; a checksum mismatch starts over
            wait = min(backoff * 2**attempt, MAX_BACKOFF) if isinstance(e, _Transient) else 0.0
            log.warning(
                "%s; trying again in %.1f s (attempt %d/%d)", e, wait, attempt + 2, retries + 1
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- extraction
def _member_target(root: Path, info: zipfile.ZipInfo, archive: Path) -> Path | None:
    """Where a member goes, or None for a directory; raise for anything escaping ``root``."""
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    mode = info.external_attr >> 16
    if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would land outside {root}")
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a symbolic link; refusing")
    target = (root / Path(*pure.parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves to {target}, outside {root}")
    return None if info.is_dir() else target


def extract(archive: Path, root: Path) -> None:
    """Extract ``archive`` into ``root`` after checking every member stays inside ``root``."""
    stamp = _stamp_path(archive, "extracted")
    state = _file_state(archive)
    if (_read_stamp(stamp) or {}).get("archive") == state:
        log.info("%s: already extracted, skipping", archive.name)
        return
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{archive} is not a valid zip file: {e}") from e
    with zf:
        infos = zf.infolist()
        targets = [_member_target(root, info, archive) for info in infos]  # check all first
        total = sum(i.file_size for i, t in zip(infos, targets, strict=True) if t is not None)
        _check_free_space(root, total, f"extracting {archive.name}")
        with _bar(total, f"extract {archive.name}") as bar:
            for info, target in zip(infos, targets, strict=True):
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                try:
                    with zf.open(info) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    os.replace(tmp, target)
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DownloadError(f"disk full extracting {info.filename}") from e
                    raise
                except zipfile.BadZipFile as e:
                    tmp.unlink(missing_ok=True)
                    raise DownloadError(f"{archive}: member {info.filename!r}: {e}") from e
                bar.update(info.file_size)
    write_json(stamp, {"archive": state})


# --------------------------------------------------------------------------- entry
def resolve_files(
    splits: Sequence[str], files: Mapping[str, Mapping[str, Any]] | None = None
) -> list[RemoteFile]:
    """The archives ``splits`` select, from ``files`` (name -> path/md5/size) or ``COCO_FILES``."""
    table = dict(COCO_FILES)
    if files:
        table = {
            name: RemoteFile(
                name,
                str(f.get("path", name)),
                f.get("md5"),
                None if f.get("size") is None else int(f["size"]),
            )
            for name, f in files.items()
        }
    out = []
    for split in splits:
        names = SPLIT_FILES.get(str(split), [str(split)])
        for name in names:
            if name not in table:
                raise UsageError(
                    f"unknown split or file {split!r}: give splits=[...] from "
                    f"{sorted(SPLIT_FILES)} or file names in {sorted(table)}"
                )
            if table[name] not in out:
                out.append(table[name])
    return out


def download_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``ensure_file``'s base_url, retries, timeout and backoff from the config, checked (one
    line each: a negative retry count used to end in an assertion, a URL without a scheme in
    urllib's traceback)."""
    base_url = str(cfg.get("base_url") or "")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise UsageError(f"base_url={base_url!r}: give an http(s):// or file:// URL")
    return {
        "base_url": base_url,
        "retries": whole_number(cfg, "retries", 3, minimum=0),
        "timeout": real_number(cfg.get("timeout", 60.0), "timeout", strict=True, hint=" (seconds)"),
        "backoff": real_number(cfg.get("backoff", 1.0), "backoff", hint=" (seconds)"),
    }


def run(cfg: Mapping[str, Any]) -> list[Path]:
    """Download, verify and extract the configured archives; returns the verified archive paths."""
    options = download_options(cfg)
    files = cfg.get("files")
    if files is not None and not isinstance(files, Mapping):
        raise UsageError("files= is a table {NAME: {path, md5, size}}, not a list; or give splits=")
    specs = resolve_files(as_list(cfg["splits"]), files)
    root = Path(str(cfg["data"]["root"])).expanduser()
    if not root.is_absolute():
        root = Path.cwd() / root
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for spec in specs:
        path = root / spec.name
        if not path.exists() and (_read_stamp(_stamp_path(path, "extracted")) or {}).get("removed"):
            log.info("%s: extracted earlier and archive removed (keep_archives=false)", spec.name)
            done.append(path)
            continue
        path = ensure_file(root=root, spec=spec, **options)
        if cfg.get("extract", True):
            extract(path, root)
            if not cfg.get("keep_archives", True):
                stamp = _stamp_path(path, "extracted")
                write_json(stamp, {**(_read_stamp(stamp) or {}), "removed": True})
                path.unlink()
                _stamp_path(path, "verified").unlink(missing_ok=True)
        done.append(path)
    log.info("COCO files ready under %s: %s", root, ", ".join(s.name for s in specs))
    return done


if __name__ == "__main__":
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="download")
    @user_errors
    def main(cfg: DictConfig) -> None:
        run(OmegaConf.to_container(cfg, resolve=True))

    main()
