"""datasets.download against a local HTTP server (127.0.0.1) serving zips built from coco-mini."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import struct
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from datasets import download
from datasets.download import DownloadError, UnsafeArchiveError
from datasets.errors import UsageError


class FileServer:
    """Serves ``files`` {url path: bytes} with Range support; can cut or corrupt responses."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: list[int] = []  # per-response byte budgets, consumed in order
        self.corrupt_next = 0  # number of upcoming responses whose first byte is flipped
        self.honour_range = True
        self.fail_next: list[int] = []  # HTTP status codes to answer with, consumed in order
        self.reset_next = 0  # number of upcoming connections reset without an answer
        self.send_length = True  # False: no Content-Length (a cut then looks like a clean end)
        self.down_after_cut = 0.0  # seconds the server stops listening after a cut
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.reset_next:
                    server.reset_next -= 1
                    # SO_LINGER 0: close() sends RST, the client sees "connection reset"
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                if server.fail_next:
                    self.send_error(server.fail_next.pop(0))
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.honour_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                if server.corrupt_next:
                    server.corrupt_next -= 1
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if server.send_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after:
                    # promise the whole body, deliver part of it, drop the connection
                    self.wfile.write(body[: server.cut_after.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    if server.down_after_cut:
                        server.outage(server.down_after_cut)
                    return
                self.wfile.write(body)

        self.handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def outage(self, seconds: float) -> None:
        """Stop listening now (connections are refused) and listen again on the same port after
        ``seconds``, as a server restarting does."""
        self.httpd.shutdown()
        self.httpd.server_close()

        def restart() -> None:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
            self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
            self.thread.start()

        threading.Timer(seconds, restart).start()

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture()
def archives(coco_mini: Path) -> dict[str, bytes]:
    """Small stand-ins for the COCO zips, built from a few coco-mini files."""
    images = sorted((coco_mini / "val2017").glob("*.jpg"))[:3]
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    return {
        "annotations_trainval2017.zip": _zip(
            {"annotations/person_keypoints_val2017.json": ann.read_bytes()}
        ),
        "val2017.zip": _zip({f"val2017/{p.name}": p.read_bytes() for p in images}),
    }


def _table(archives: dict[str, bytes]) -> dict[str, dict]:
    paths = {"annotations_trainval2017.zip": "annotations/", "val2017.zip": "zips/"}
    return {
        name: {"path": paths[name] + name, "md5": hashlib.md5(data).hexdigest(), "size": len(data)}
        for name, data in archives.items()
    }


def _serve(server: FileServer, archives: dict[str, bytes]) -> None:
    for name, spec in _table(archives).items():
        server.files["/" + spec["path"]] = archives[name]


def _cfg(server: FileServer, root: Path, archives: dict[str, bytes], **kw) -> dict:
    cfg = {
        "data": {"root": str(root)},
        "base_url": server.url,
        "splits": ["annotations", "val"],
        "files": _table(archives),
        "retries": 2,
        "backoff": 0.01,  # tests that check the waits give their own
        "timeout": 10,
        "extract": True,
        "keep_archives": True,
    }
    cfg.update(kw)
    return cfg


def test_official_table_is_complete():
    for name, spec in download.COCO_FILES.items():
        assert re.fullmatch(r"[0-9a-f]{32}", spec.md5), name
        assert spec.size > 100_000_000, name
    assert [s.name for s in download.resolve_files(["val"])] == ["val2017.zip"]
    with pytest.raises(UsageError, match="unknown split"):
        download.resolve_files(["test"])


def test_download_verify_extract_then_skip(tmp_path, archives, coco_mini):
    root = tmp_path / "coco"
    with FileServer() as server:
        _serve(server, archives)
        download.run(_cfg(server, root, archives))
        assert len(server.requests) == 2
        ann = root / "annotations" / "person_keypoints_val2017.json"
        assert ann.read_bytes() == (coco_mini / "annotations" / ann.name).read_bytes()
        extracted = sorted(p.name for p in (root / "val2017").iterdir())
        assert len(extracted) == 3 and all(n.endswith(".jpg") for n in extracted)
        assert not list(root.glob("*.part")) and not list(root.rglob("*.tmp*"))
        # a rerun finds everything complete and does not touch the network
        download.run(_cfg(server, root, archives))
        assert len(server.requests) == 2


def test_interrupted_transfer_resumes_with_range(tmp_path, archives):
    root = tmp_path / "coco"
    name = "val2017.zip"
    size = len(archives[name])
    with FileServer() as server:
        _serve(server, archives)
        server.cut_after = [size // 3]
        download.run(_cfg(server, root, archives, splits=["val"]))
        assert server.requests[0] == ("/zips/val2017.zip", None)
        assert server.requests[1] == ("/zips/val2017.zip", f"bytes={size // 3}-")
        assert (root / name).read_bytes() == archives[name]


def test_interruption_without_retries_leaves_only_part_file(tmp_path, archives):
    root = tmp_path / "coco"
    name = "val2017.zip"
    size = len(archives[name])
    with FileServer() as server:
        _serve(server, archives)
        server.cut_after = [size // 2]
        with pytest.raises(DownloadError, match="connection lost"):
            download.run(_cfg(server, root, archives, splits=["val"], retries=0))
        assert not (root / name).exists()  # nothing that looks complete
        assert (root / (name + ".part")).stat().st_size == size // 2
        download.run(_cfg(server, root, archives, splits=["val"], retries=0))
        assert server.requests[-1][1] == f"bytes={size // 2}-"
        assert (root / name).read_bytes() == archives[name]


def test_corrupted_part_is_detected_and_refetched(tmp_path, archives):
    root = tmp_path / "coco"
    root.mkdir()
    name = "val2017.zip"
    data = archives[name]
    bad = bytearray(data[: len(data) // 2])
    bad[100] ^= 0x01  # one flipped bit in what a previous run downloaded
    (root / (name + ".part")).write_bytes(bytes(bad))
    with FileServer() as server:
        _serve(server, archives)
        download.run(_cfg(server, root, archives, splits=["val"]))
        # resumed first, the md5 failed, the whole file came again
        assert [r for _, r in server.requests] == [f"bytes={len(bad)}-", None]
    assert (root / name).read_bytes() == data


def test_corrupted_complete_file_is_refetched(tmp_path, archives):
    root = tmp_path / "coco"
    name = "val2017.zip"
    with FileServer() as server:
        _serve(server, archives)
        cfg = _cfg(server, root, archives, splits=["val"])
        download.run(cfg)
        path = root / name
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-clock filesystems
        download.run(cfg)
        assert len(server.requests) == 2
        assert path.read_bytes() == archives[name]


def test_server_always_corrupt_gives_clear_error(tmp_path, archives):
    root = tmp_path / "coco"
    with FileServer() as server:
        _serve(server, archives)
        server.corrupt_next = 10
        with pytest.raises(
            DownloadError, match=r"val2017.zip: md5 .* \(gave up after 2 attempts\)"
        ):
            download.run(_cfg(server, root, archives, splits=["val"], retries=1))
    assert not (root / "val2017.zip").exists()
    assert not (root / "val2017.zip.part").exists()


def test_server_ignoring_range_restarts(tmp_path, archives):
    root = tmp_path / "coco"
    root.mkdir()
    name = "val2017.zip"
    (root / (name + ".part")).write_bytes(archives[name][:1000])
    with FileServer() as server:
        _serve(server, archives)
        server.honour_range = False
        download.run(_cfg(server, root, archives, splits=["val"]))
    assert (root / name).read_bytes() == archives[name]


def test_http_error_is_clear(tmp_path, archives):
    root = tmp_path / "coco"
    with FileServer() as server:  # serves nothing: every path is a 404
        with pytest.raises(DownloadError, match=r"HTTP 404 .*annotations_trainval2017.zip"):
            download.run(_cfg(server, root, archives))
    assert not list(root.glob("*.zip"))


def test_unreachable_host_is_clear(tmp_path, archives):
    with FileServer() as server:
        url = server.url
    cfg = {**_cfg(server, tmp_path, archives), "base_url": url}  # server already shut down
    with pytest.raises(DownloadError, match="cannot fetch"):
        download.run(cfg)


def test_disk_full_mid_transfer(tmp_path, archives, monkeypatch):
    root = tmp_path / "coco"
    name = "val2017.zip"

    class FullDisk:
        def __init__(self, f, budget):
            self.f, self.budget = f, budget

        def write(self, block):
            if len(block) > self.budget:
                self.f.write(block[: self.budget])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.budget -= len(block)
            return self.f.write(block)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = download._open_part
    monkeypatch.setattr(download, "_open_part", lambda p, m: FullDisk(real_open(p, m), 5000))
    with FileServer() as server:
        _serve(server, archives)
        with pytest.raises(DownloadError, match="disk full writing .*val2017.zip.part after 5000"):
            download.run(_cfg(server, root, archives, splits=["val"]))
        assert not (root / name).exists()
        assert (root / (name + ".part")).stat().st_size == 5000
        monkeypatch.setattr(download, "_open_part", real_open)
        download.run(_cfg(server, root, archives, splits=["val"]))  # space freed: resumes
        assert server.requests[-1][1] == "bytes=5000-"
    assert (root / name).read_bytes() == archives[name]


def test_not_enough_space_checked_before_transfer(tmp_path, archives, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: usage._replace(free=10))
    with FileServer() as server:
        _serve(server, archives)
        with pytest.raises(DownloadError, match="not enough disk space .* val2017.zip"):
            download.run(_cfg(server, tmp_path / "coco", archives, splits=["val"]))
    assert not (tmp_path / "coco" / "val2017.zip").exists()


@pytest.mark.parametrize(
    "member", ["../evil.txt", "val2017/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt"]
)
def test_traversal_member_rejected(tmp_path, member):
    root = tmp_path / "coco"
    root.mkdir()
    archive = root / "bad.zip"
    archive.write_bytes(_zip({"val2017/ok.txt": b"fine", member: b"evil"}))
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(member))):
        download.extract(archive, root)
    # every member is checked before anything is written
    assert not (root / "val2017").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_member_rejected(tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("val2017/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    (root / "bad.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        download.extract(root / "bad.zip", root)


def test_keep_archives_false_removes_zip_and_rerun_skips(tmp_path, archives):
    root = tmp_path / "coco"
    with FileServer() as server:
        _serve(server, archives)
        download.run(_cfg(server, root, archives, keep_archives=False))
        assert not list(root.glob("*.zip"))
        assert (root / "annotations" / "person_keypoints_val2017.json").is_file()
        download.run(_cfg(server, root, archives, keep_archives=False))
        assert len(server.requests) == 2


def test_cli_reports_failure_clearly(tmp_path):
    """``python -m datasets.download`` parses its Hydra config; a failure exits 1 with the cause."""
    import subprocess
    import sys

    with FileServer() as server:  # serves nothing: 404 for the annotations zip
        cmd = [
            sys.executable,
            "-m",
            "datasets.download",
            f"data.root={tmp_path / 'coco'}",
            f"base_url={server.url}",
            "splits=[annotations]",
            f"hydra.run.dir={tmp_path / 'out'}",
        ]
        repo = Path(__file__).resolve().parent.parent
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: HTTP 404 ") and last.endswith(
        "annotations/annotations_trainval2017.zip"
    ), proc.stderr


@pytest.fixture()
def waits(monkeypatch) -> list[float]:
    """The backoff waits download asks for (they still happen, shortened to 1/10)."""
    asked: list[float] = []
    real_sleep = time.sleep

    def sleep(s: float) -> None:
        asked.append(s)
        real_sleep(s / 10)

    monkeypatch.setattr(download.time, "sleep", sleep)
    return asked


def test_http_5xx_is_retried_with_exponential_backoff(tmp_path, archives, waits):
    root = tmp_path / "coco"
    with FileServer() as server:
        _serve(server, archives)
        server.fail_next = [503, 500]
        download.run(_cfg(server, root, archives, splits=["val"], retries=3, backoff=0.5))
    assert waits == [0.5, 1.0]
    assert download.is_verified(
        root / "val2017.zip", download.resolve_files(["val"], _table(archives))[0]
    )


def test_http_5xx_gives_up_after_the_retries_and_4xx_is_not_retried(tmp_path, archives, waits):
    root = tmp_path / "coco"
    with FileServer() as server:
        _serve(server, archives)
        server.fail_next = [502] * 3
        with pytest.raises(DownloadError, match=r"HTTP 502 .*val2017.zip \(gave up after 3 att"):
            download.run(_cfg(server, root, archives, splits=["val"], retries=2, backoff=1))
        assert waits == [1, 2]
        server.requests.clear()
        server.files.clear()  # 404
        with pytest.raises(DownloadError, match="HTTP 404"):
            download.run(_cfg(server, root, archives, splits=["val"], retries=2))
        assert len(server.requests) == 1 and waits == [1, 2]  # 404: no retry, no wait


def test_cut_then_connection_refused_then_reset_resumes(tmp_path, archives, waits):
    """The server drops the transfer and stops listening for a while (connections refused), and
    once back it resets the first connection: the download backs off, retries, and resumes the
    .part with a Range request."""
    root = tmp_path / "coco"
    size = len(archives["val2017.zip"])
    with FileServer() as server:
        _serve(server, archives)
        server.cut_after = [size // 3]
        server.down_after_cut = 1.0  # refused for 1 s; the waits below are 0.2, 0.4, 0.8, ... s
        threading.Timer(0.5, lambda: setattr(server, "reset_next", 1)).start()
        download.run(_cfg(server, root, archives, splits=["val"], retries=8, backoff=2.0))
        served = [r for p, r in server.requests if p.endswith("val2017.zip")]
    assert served[0] is None and served[1:] == [f"bytes={size // 3}-"] * 2  # reset, then resumed
    assert waits[:3] == [2.0, 4.0, 8.0]  # a cut, then refused (no request reached the server)
    assert (root / "val2017.zip").stat().st_size == size and (root / "val2017").is_dir()


def test_cut_without_content_length_keeps_the_part(tmp_path, archives):
    root = tmp_path / "coco"
    size = len(archives["val2017.zip"])
    with FileServer() as server:
        _serve(server, archives)
        server.send_length = False
        server.cut_after = [size // 2]
        with pytest.raises(DownloadError) as e:
            download.run(_cfg(server, root, archives, splits=["val"], retries=0))
        msg = str(e.value)
        assert (
            f"stopped after {size // 2} of {size} bytes" in msg and "kept val2017.zip.part" in msg
        )
        assert "files table" not in msg
        assert (root / "val2017.zip.part").stat().st_size == size // 2
        download.run(_cfg(server, root, archives, splits=["val"], retries=0))  # resumes
    assert server.requests[-1][1] == f"bytes={size // 2}-"
    assert (root / "val2017.zip").stat().st_size == size


def test_no_dead_default_url():
    assert not hasattr(download, "DEFAULT_BASE_URL")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"retries": -1}, "retries must be a whole number >= 0, got -1"),
        ({"retries": "abc"}, "retries must be a whole number >= 0, got 'abc'"),
        ({"timeout": 0}, "timeout must be a number > 0 (seconds), got 0"),
        ({"backoff": -1}, "backoff must be a number >= 0 (seconds), got -1"),
        ({"base_url": "notaurl"}, "base_url='notaurl': give an http(s):// or file:// URL"),
        ({"files": ["x.zip"]}, "files= is a table {NAME: {path, md5, size}}, not a list"),
        ({"splits": "bogus"}, "unknown split or file 'bogus'"),  # one bare split, not b, o, g...
    ],
)
def test_bad_options_are_one_line_usage_errors_before_any_fetch(tmp_path, override, message):
    cfg = {
        "data": {"root": str(tmp_path / "coco")},
        "base_url": "http://127.0.0.1:1",  # never contacted
        "splits": ["annotations"],
        **override,
    }
    with pytest.raises(UsageError) as e:
        download.run(cfg)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "coco").exists()
