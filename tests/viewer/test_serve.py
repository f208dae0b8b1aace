"""`bluff serve`: byte ranges, HEAD, content types, validators (ETag, 304, If-Range), refusal of paths
outside its two roots, the Host check, idle connections, clients that disconnect, and Chromium with
its HTTP cache reopening pages of results that get rewritten."""

from __future__ import annotations

import base64
import email.utils
import http.client
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bluff_ray.web.serve import ViewerNotBuilt, make_server, parse_range, start_server

PART = "/results/nodes/original=0/part-0.parquet"


@dataclass
class Served:
    host: str
    port: int
    data: bytes
    file: Path  # the file behind PART
    server: object

    def __iter__(self):  # host, port, data = served
        return iter((self.host, self.port, self.data))


def _fake_viewer(tmp_path: Path) -> Path:
    viewer = tmp_path / "viewer"
    viewer.mkdir(exist_ok=True)
    (viewer / "index.html").write_text("<!doctype html><title>v</title>")
    return viewer


@pytest.fixture
def served(tmp_path):
    """A results root with a known file, a symlink escaping it, and a fake built viewer."""
    root = tmp_path / "results"
    (root / "nodes" / "original=0").mkdir(parents=True)
    data = bytes(range(256)) * 40  # 10240 bytes, every offset identifiable
    f = root / "nodes" / "original=0" / "part-0.parquet"
    f.write_bytes(data)
    (root / "manifest.json").write_text('{"schema_version": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    os.symlink(secret, root / "escape.txt")
    server, _url = start_server(root, viewer_dir=_fake_viewer(tmp_path))
    host, port = server.server_address[:2]
    yield Served(host, port, data, f, server)
    server.shutdown()
    server.server_close()


def request(host, port, method, path, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


def test_range_requests_return_exact_bytes(served):
    host, port, data = served
    path = PART
    r, body = request(host, port, "GET", path, {"Range": "bytes=100-199"})
    assert r.status == 206
    assert body == data[100:200]
    assert r.getheader("Content-Range") == f"bytes 100-199/{len(data)}"
    assert r.getheader("Content-Length") == "100"
    assert r.getheader("Accept-Ranges") == "bytes"
    assert r.getheader("Content-Encoding") is None
    assert r.getheader("Content-Type") == "application/vnd.apache.parquet"
    # suffix range (the viewer's footer read) and open-ended range
    r, body = request(host, port, "GET", path, {"Range": "bytes=-16"})
    assert r.status == 206 and body == data[-16:]
    assert r.getheader("Content-Range") == f"bytes {len(data) - 16}-{len(data) - 1}/{len(data)}"
    r, body = request(host, port, "GET", path, {"Range": f"bytes={len(data) - 5}-"})
    assert r.status == 206 and body == data[-5:]
    # a range starting at the end is unsatisfiable; a longer suffix or end is clipped to the file
    r, body = request(host, port, "GET", path, {"Range": "bytes=10240-99999"})
    assert r.status == 416
    r, body = request(host, port, "GET", path, {"Range": "bytes=-999999"})
    assert r.status == 206 and body == data
    r, body = request(host, port, "GET", path, {"Range": "bytes=10000-20000"})
    assert r.status == 206 and body == data[10000:]


def test_unsatisfiable_and_ignored_ranges(served):
    host, port, data = served
    path = PART
    r, body = request(host, port, "GET", path, {"Range": f"bytes={len(data)}-"})
    assert r.status == 416
    assert r.getheader("Content-Range") == f"bytes */{len(data)}"
    # several ranges / other units: ignored (RFC 9110 allows it), whole body with 200
    r, body = request(host, port, "GET", path, {"Range": "bytes=0-1,5-6"})
    assert r.status == 200 and body == data
    r, body = request(host, port, "GET", path, {"Range": "items=0-1"})
    assert r.status == 200 and body == data


def test_head_and_plain_get(served):
    host, port, data = served
    r, body = request(host, port, "HEAD", PART)
    assert r.status == 200 and body == b""
    assert r.getheader("Content-Length") == str(len(data))
    r, body = request(host, port, "GET", "/results/manifest.json")
    assert r.status == 200 and body == b'{"schema_version": 1}'
    assert r.getheader("Content-Type") == "application/json"
    r, body = request(host, port, "GET", "/")
    assert r.status == 200 and b"<title>v</title>" in body
    assert r.getheader("Content-Type").startswith("text/html")
    r, body = request(host, port, "GET", "/config.json")
    assert r.status == 200 and body == b'{"root": "results/"}'


@pytest.mark.parametrize(
    "path",
    [
        "/results/../secret.txt",
        "/results/%2e%2e/secret.txt",
        "/results/nodes/%2E%2E/%2E%2E/secret.txt",
        "/results/..%2fsecret.txt",
        "/results/escape.txt",  # symlink pointing outside the root
        "/../secret.txt",
        "/results/nodes%5c..%5c..%5csecret.txt",
        "/results/%00",
    ],
)
def test_traversal_is_refused(served, path):
    host, port, _ = served
    r, body = request(host, port, "GET", path)
    assert r.status in (400, 403, 404)
    assert b"outside the root" not in body


def test_missing_file_and_no_listing(served):
    host, port, _ = served
    assert request(host, port, "GET", "/results/nope.parquet")[0].status == 404
    assert request(host, port, "GET", "/results/nodes/")[0].status == 404


def test_binds_loopback_by_default(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "index.html").write_text("x")
    server, url = start_server(tmp_path, viewer_dir=tmp_path / "v")
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert url.startswith("http://127.0.0.1:")
        # not reachable on another local address of this machine (when it has one)
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for addr in others:
            with pytest.raises(OSError):
                socket.create_connection((addr, server.server_address[1]), timeout=2).close()
    finally:
        server.shutdown()
        server.server_close()


def test_clear_errors(tmp_path):
    with pytest.raises(ViewerNotBuilt, match="make viewer"):
        make_server(tmp_path, port=0, viewer_dir=tmp_path / "no-viewer")
    with pytest.raises(FileNotFoundError, match="results folder not found"):
        make_server(tmp_path / "missing", port=0)
    with pytest.raises(ValueError, match="bluff publish"):
        make_server("s3://bucket/prefix", port=0)


def test_parse_range_unit():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=8-", 10) == (8, 9)
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "bluff_ray.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("RESULTS", "--port", "--host", "--open", "127.0.0.1", "--allow-host", "--idle-timeout"):
        assert word in out


# --- validators: ETag, Last-Modified, 304, 412, If-Range ---------------------------------------------


def set_mtime(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def test_validators_on_every_response(served):
    r, _ = request(served.host, served.port, "GET", PART)
    etag, lm = r.getheader("ETag"), r.getheader("Last-Modified")
    assert re.fullmatch(r'"[^"]+"', etag)  # strong: no W/ prefix
    assert email.utils.parsedate_to_datetime(lm).timestamp() == int(served.file.stat().st_mtime)
    assert r.getheader("Cache-Control") == "no-cache"  # the viewer always revalidates
    assert r.getheader("Accept-Ranges") == "bytes"
    assert r.getheader("Vary") is None  # nothing depends on other request headers
    h, _ = request(served.host, served.port, "HEAD", PART)
    p, _ = request(served.host, served.port, "GET", PART, {"Range": "bytes=0-9"})
    assert h.getheader("ETag") == p.getheader("ETag") == etag
    assert h.getheader("Last-Modified") == p.getheader("Last-Modified") == lm
    other = request(served.host, served.port, "GET", "/results/manifest.json")[0].getheader("ETag")
    assert other and other != etag
    cfg = request(served.host, served.port, "GET", "/config.json")[0]
    assert cfg.getheader("ETag") and cfg.getheader("Cache-Control") == "no-cache"


def test_if_none_match_and_if_modified_since_give_304(served):
    host, port, data = served
    r, _ = request(host, port, "GET", PART)
    etag, lm = r.getheader("ETag"), r.getheader("Last-Modified")
    for inm in (etag, f'"nope", {etag}', f"W/{etag}", "*"):  # weak comparison; lists; any
        r, body = request(host, port, "GET", PART, {"If-None-Match": inm})
        assert (r.status, body) == (304, b""), inm
        assert r.getheader("ETag") == etag and r.getheader("Cache-Control") == "no-cache"
        assert r.getheader("Content-Length") is None
    r, body = request(host, port, "HEAD", PART, {"If-None-Match": etag})
    assert r.status == 304
    r, body = request(host, port, "GET", PART, {"If-None-Match": '"other"'})
    assert (r.status, body) == (200, data)
    # If-Modified-Since: not modified since Last-Modified (or later); modified since an hour ago
    assert request(host, port, "GET", PART, {"If-Modified-Since": lm})[0].status == 304
    r, body = request(host, port, "GET", PART, {"If-Modified-Since": http_date(time.time() - 3600)})
    assert (r.status, body) == (200, data)
    assert request(host, port, "GET", PART, {"If-Modified-Since": "yesterday"})[0].status == 200  # invalid: ignored
    # If-None-Match takes precedence over If-Modified-Since
    r, body = request(host, port, "GET", PART, {"If-None-Match": '"other"', "If-Modified-Since": lm})
    assert (r.status, body) == (200, data)
    # a cached range that is still current: 304, whatever the range
    r, body = request(host, port, "GET", PART, {"If-None-Match": etag, "Range": "bytes=-16384"})
    assert (r.status, body) == (304, b"")
    # generated config.json revalidates too
    c = request(host, port, "GET", "/config.json")[0].getheader("ETag")
    assert request(host, port, "GET", "/config.json", {"If-None-Match": c})[0].status == 304


def test_304_keeps_the_connection_usable(served):
    """A 304 has no body: the next response on the same keep-alive connection must parse."""
    host, port, data = served
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", PART, headers={"Range": "bytes=0-3"})
        r = conn.getresponse()
        etag = r.getheader("ETag")
        assert (r.status, r.read()) == (206, data[:4])
        for _ in range(3):
            conn.request("GET", PART, headers={"If-None-Match": etag})
            r = conn.getresponse()
            assert (r.status, r.read()) == (304, b"")
            conn.request("GET", PART, headers={"Range": "bytes=10-19"})
            r = conn.getresponse()
            assert (r.status, r.read()) == (206, data[10:20])
    finally:
        conn.close()


def test_if_match_and_if_unmodified_since_give_412(served):
    host, port, data = served
    r, _ = request(host, port, "GET", PART)
    etag, lm = r.getheader("ETag"), r.getheader("Last-Modified")
    assert request(host, port, "GET", PART, {"If-Match": etag})[0].status == 200
    assert request(host, port, "GET", PART, {"If-Match": "*"})[0].status == 200
    assert request(host, port, "GET", PART, {"If-Match": '"other"'})[0].status == 412
    assert request(host, port, "GET", PART, {"If-Match": f"W/{etag}"})[0].status == 412  # strong comparison
    assert request(host, port, "GET", PART, {"If-Unmodified-Since": lm})[0].status == 200
    r, body = request(host, port, "GET", PART, {"If-Unmodified-Since": http_date(time.time() - 7200)})
    assert r.status == 412 and data not in body


def test_if_range_etag(served):
    host, port, data = served
    etag = request(host, port, "GET", PART)[0].getheader("ETag")
    r, body = request(host, port, "GET", PART, {"Range": "bytes=100-199", "If-Range": etag})
    assert (r.status, body) == (206, data[100:200])
    for stale in ('"other"', f"W/{etag}"):  # another version, or a weak tag (never matches If-Range)
        r, body = request(host, port, "GET", PART, {"Range": "bytes=100-199", "If-Range": stale})
        assert (r.status, body) == (200, data), stale
        assert r.getheader("Content-Range") is None
    # a mismatching If-Range turns even an unsatisfiable range into the whole file
    r, body = request(host, port, "GET", PART, {"Range": f"bytes={len(data)}-", "If-Range": '"other"'})
    assert (r.status, body) == (200, data)


def test_if_range_date(served):
    host, port, data = served
    set_mtime(served.file, 3600)
    lm = request(host, port, "GET", PART)[0].getheader("Last-Modified")
    r, body = request(host, port, "GET", PART, {"Range": "bytes=0-9", "If-Range": lm})
    assert (r.status, body) == (206, data[:10])
    r, body = request(host, port, "GET", PART, {"Range": "bytes=0-9", "If-Range": http_date(time.time() - 7200)})
    assert (r.status, body) == (200, data)
    # a date is a strong validator only when the file was written at least a second earlier
    served.file.write_bytes(data)
    lm = request(host, port, "GET", PART)[0].getheader("Last-Modified")
    r, body = request(host, port, "GET", PART, {"Range": "bytes=0-9", "If-Range": lm})
    assert (r.status, body) == (200, data)


def test_rewritten_file_changes_its_etag_and_stale_ranges_get_the_whole_file(served):
    """What a browser cache does after a run rewrote a file in place (same size, other bytes)."""
    host, port, data = served
    r, _ = request(host, port, "GET", PART, {"Range": "bytes=-16"})
    old_etag, old_lm = r.getheader("ETag"), r.getheader("Last-Modified")
    inode = served.file.stat().st_ino
    new = bytes(reversed(data))
    with open(served.file, "r+b") as f:  # in place: same inode, same size
        f.write(new)
    assert served.file.stat().st_ino == inode and len(new) == len(data)
    r, body = request(host, port, "GET", PART)
    assert body == new and r.getheader("ETag") != old_etag
    # revalidating a cached part with the old tag: the whole new file, not bytes to splice into the old copy
    r, body = request(
        host, port, "GET", PART, {"Range": "bytes=10224-10239", "If-None-Match": old_etag, "If-Modified-Since": old_lm}
    )
    assert (r.status, body) == (200, new)
    r, body = request(host, port, "GET", PART, {"Range": "bytes=0-9", "If-Range": old_etag})
    assert (r.status, body) == (200, new)
    # a different size: the same, and Content-Length is the new size
    served.file.write_bytes(new[:5000])
    r, body = request(host, port, "GET", PART, {"Range": "bytes=10224-10239", "If-None-Match": old_etag})
    assert (r.status, body) == (200, new[:5000]) and r.getheader("Content-Length") == "5000"
    # with the current tag: ranges again
    etag = r.getheader("ETag")
    r, body = request(host, port, "GET", PART, {"Range": "bytes=-8", "If-Range": etag})
    assert (r.status, body) == (206, new[4992:5000])
    assert request(host, port, "GET", PART, {"If-None-Match": etag})[0].status == 304


# --- Host header (DNS rebinding), idle connections, disconnects ----------------------------------------


def raw_request(host: str, port: int, raw: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize(
    "host_header,ok",
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("LOCALHOST:1", True),
        ("127.0.0.1", True),
        ("127.0.0.1:80", True),
        ("127.8.9.10:8000", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1", False),
        ("[::2]:80", False),
        ("localhost:80@evil", False),
        ("", False),
    ],
)
def test_host_header_checked_on_loopback(served, host_header, ok):
    r, body = request(served.host, served.port, "GET", "/results/manifest.json", {"Host": host_header})
    if ok:
        assert (r.status, body) == (200, b'{"schema_version": 1}')
    else:
        assert r.status == 421
        assert b"schema_version" not in body and b"--allow-host" in body


def test_missing_host_header(served):
    resp = raw_request(served.host, served.port, b"GET /results/manifest.json HTTP/1.1\r\nConnection: close\r\n\r\n")
    # aiohttp's parser refuses it before the handler, answering HTTP/1.0 (the old server said HTTP/1.1)
    assert re.match(rb"HTTP/1\.[01] 400 ", resp) and b"schema_version" not in resp
    resp = raw_request(served.host, served.port, b"GET /results/manifest.json HTTP/1.0\r\n\r\n")  # HTTP/1.0 may omit it
    assert re.match(rb"HTTP/1\.[01] 200 ", resp) and resp.endswith(b'{"schema_version": 1}')  # aiohttp: 1.0


def test_allow_host_adds_names(tmp_path):
    (tmp_path / "r").mkdir()
    server, _ = start_server(tmp_path / "r", viewer_dir=_fake_viewer(tmp_path), allow_hosts=["bluff.test"])
    try:
        host, port = server.server_address[:2]
        assert request(host, port, "GET", "/config.json", {"Host": "bluff.test:8000"})[0].status == 200
        assert request(host, port, "GET", "/config.json", {"Host": "Bluff.Test"})[0].status == 200
        assert request(host, port, "GET", "/config.json", {"Host": "other.test"})[0].status == 421
        assert request(host, port, "GET", "/config.json", {"Host": "localhost"})[0].status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_no_host_check_when_not_on_loopback(tmp_path):
    """Bound to all addresses, the results are reachable by anyone anyway: any Host is answered."""
    (tmp_path / "r").mkdir()
    server, _ = start_server(tmp_path / "r", host="0.0.0.0", viewer_dir=_fake_viewer(tmp_path))
    try:
        port = server.server_address[1]
        assert request("127.0.0.1", port, "GET", "/config.json", {"Host": "evil.example"})[0].status == 200
    finally:
        server.shutdown()
        server.server_close()


def wait_for(cond, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_idle_connections_are_closed_and_their_threads_end(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text("{}")
    server, _ = start_server(tmp_path / "r", viewer_dir=_fake_viewer(tmp_path), idle_timeout=1.0)
    host, port = server.server_address[:2]
    socks = []
    try:
        opened = time.monotonic()
        for i in range(50):
            s = socket.create_connection((host, port), timeout=10)
            if i % 5 == 0:
                s.sendall(b"GET /results/manifest.json HTTP/1.1\r\nHo")  # a request that never ends
            socks.append(s)
        # the server holds every connection while they are open (so the check below means something);
        # aiohttp serves them on one event loop: its connection list stands for the old per-connection threads
        assert wait_for(lambda: server.connections() >= 50, 5), server.connections()
        # a working client is still served meanwhile
        assert request(host, port, "GET", "/results/manifest.json")[0].status == 200
        for s in socks:  # the server closes each silent connection: EOF (or a reset), not a hang
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            assert b"200 OK" not in data
        closed_after = time.monotonic() - opened
        assert 0.9 <= closed_after < 8, closed_after
        assert wait_for(lambda: server.connections() == 0, 5), server.connections()  # all released
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()


def test_client_disconnect_mid_response_logs_one_line(tmp_path, capfd):
    root = tmp_path / "r"
    root.mkdir()
    (root / "big.parquet").write_bytes(os.urandom(64 * 2**20))  # far more than the socket buffers hold
    server, _ = start_server(root, viewer_dir=_fake_viewer(tmp_path), quiet=False)
    host, port = server.server_address[:2]
    try:
        capfd.readouterr()
        for _ in range(3):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(f"GET /results/big.parquet HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            s.close()
        err = ""
        end = time.monotonic() + 10
        while time.monotonic() < end and err.count("disconnected") < 3:
            time.sleep(0.1)
            err += capfd.readouterr().err
        time.sleep(0.3)
        err += capfd.readouterr().err
        assert "Traceback" not in err, err
        assert err.count("client disconnected") == 3, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 6, lines  # per connection: the request line and the disconnect, nothing more
        # and the server still serves
        assert request(host, port, "GET", "/config.json")[0].status == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stall watch reads Linux's SIOCOUTQ")
def test_a_client_that_stops_reading_is_cut_off_and_a_slow_one_is_not(tmp_path, capfd):
    """aiohttp has no write timeout: a client that stops reading a large file held its connection
    (and the open file) for good. Now it is reset after ``idle_timeout`` seconds without progress,
    with one log line, while a slow client that keeps reading gets the whole file."""
    root = tmp_path / "r"
    root.mkdir()
    data = os.urandom(24 * 2**20)  # far more than the socket buffers hold
    (root / "big.parquet").write_bytes(data)
    server, _ = start_server(root, viewer_dir=_fake_viewer(tmp_path), quiet=False, idle_timeout=1.0)
    host, port = server.server_address[:2]
    get = f"GET /results/big.parquet HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    try:
        capfd.readouterr()
        stalled = socket.create_connection((host, port), timeout=10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(get)
        t0 = time.monotonic()
        assert wait_for(lambda: server.connections() == 1, 5)
        assert wait_for(lambda: server.connections() == 0, 10), "the stalled connection is still open"
        assert 0.9 <= time.monotonic() - t0 < 8
        received = 0
        with pytest.raises(ConnectionResetError):
            while chunk := stalled.recv(2**20):  # what was in flight, then the reset
                received += len(chunk)
        assert received < len(data)
        stalled.close()
        # a slow reader: 64 KiB every 0.2 s (a 1 s idle timeout sees it progress), then all at once
        slow = socket.create_connection((host, port), timeout=10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.sendall(get)
        body = b""
        for _ in range(20):
            body += slow.recv(65536)
            time.sleep(0.2)
        while len(body) < len(data) + 100:
            chunk = slow.recv(2**20)
            if not chunk:
                break
            body += chunk
            if body.endswith(data[-64:]):
                break
        slow.close()
        assert body.split(b"\r\n\r\n", 1)[1] == data
        err = capfd.readouterr().err
        assert "Traceback" not in err, err
        assert err.count("client disconnected (it read nothing for 1 s)") == 1, err
        assert request(host, port, "GET", "/config.json")[0].status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_cli_serve_refuses_foreign_host(tmp_path, viewer_dist):
    """The real `bluff serve` process: a free port, the Host check, --allow-host, Ctrl-C."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text("{}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "serve",
            str(tmp_path / "r"),
            "--port",
            "0",
            "--allow-host",
            "bluff.test",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        port = int(m.group(1))
        assert request("127.0.0.1", port, "GET", "/results/manifest.json")[0].status == 200
        assert request("127.0.0.1", port, "GET", "/results/manifest.json", {"Host": "bluff.test:1"})[0].status == 200
        r, body = request("127.0.0.1", port, "GET", "/results/manifest.json", {"Host": "attacker.example"})
        assert r.status == 421 and b"DNS rebinding" in body
    finally:
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()


# --- Chromium with its HTTP cache: reopening pages whose results are rewritten ------------------------

TAIL = 16 * 1024  # the viewer's footer read
HARNESS = """<!doctype html><title>range harness</title><script>
// The viewer's access pattern, without the viewer: a suffix read, then a bounded range.
window.readRange = async (url, range) => {
  const r = await fetch(url, {headers: {Range: range}});
  const buf = new Uint8Array(await r.arrayBuffer());
  let s = "";
  for (let i = 0; i < buf.length; i += 8192) s += String.fromCharCode.apply(null, buf.subarray(i, i + 8192));
  return {status: r.status, contentRange: r.headers.get("Content-Range"), b64: btoa(s)};
};
</script>"""


@pytest.fixture
def cached_context(browser, tmp_path):
    """A persistent Chromium profile (disk HTTP cache on, as in a normal browser), shared by all reopenings."""
    ctx = browser.browser_type.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path="/usr/bin/chromium",
        headless=True,
        args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"],
    )
    errors: list[str] = []
    ctx.on("page", lambda p: p.on("pageerror", lambda e: errors.append(str(e))))
    yield ctx, errors
    ctx.close()


@pytest.fixture
def request_log(monkeypatch):
    """(path, status, conditional headers) of every request the servers started in the test answer."""
    import bluff_ray.web.serve as serve_mod

    log: list[tuple[str, int, dict]] = []
    keep = ("range", "if-range", "if-none-match", "if-modified-since")

    def log_request(self, request, response, time):  # the access logger's hook (aiohttp's AbstractAccessLogger.log)
        log.append(
            (request.raw_path, response.status, {k.lower(): v for k, v in request.headers.items() if k.lower() in keep})
        )

    monkeypatch.setattr(serve_mod._AccessLog, "log", log_request)
    return log


def _check_read(res: dict, current: bytes, want: tuple[int, int]) -> str | None:
    """None when a read of bytes [a, b] (inclusive) of ``current`` came back right, else what is wrong:
    206 with exactly those bytes and their Content-Range, or 200 with the whole current file."""
    body = base64.b64decode(res["b64"])
    a, b = want
    if res["status"] == 200:
        return None if body == current else f"200 with {len(body)} wrong bytes"
    if res["status"] != 206:
        return f"HTTP {res['status']}"
    if res["contentRange"] != f"bytes {a}-{b}/{len(current)}":
        return f"Content-Range {res['contentRange']!r}, expected bytes {a}-{b}/{len(current)}"
    if body != current[a : b + 1]:
        return f"206 body differs from bytes {a}-{b} of the current file"
    return None


def test_chromium_cache_reopening_range_reads(tmp_path, cached_context, request_log):
    """60 reopenings of a page doing the viewer's reads (suffix, then a range) through Chromium's disk
    cache, then files rewritten in place (other bytes: another size, the same size, a new inode) and
    60 more: every read returns exactly the current file's bytes."""
    ctx, errors = cached_context
    root = tmp_path / "r"
    (root / "nodes").mkdir(parents=True)
    viewer = tmp_path / "harness"
    viewer.mkdir()
    (viewer / "index.html").write_text(HARNESS)
    names = [f"nodes/part-{i}.parquet" for i in range(4)]
    rng = random.Random(0)

    def content(size: int) -> bytes:
        return b"PAR1" + rng.randbytes(size - 8) + b"PAR1"

    for i, n in enumerate(names):
        (root / n).write_bytes(content(200_000 + 37_000 * i))
        set_mtime(root / n, 7200)  # old enough for a date to be a strong validator in Chromium too
    server, url = start_server(root, viewer_dir=viewer)
    page = ctx.new_page()
    problems: list[str] = []

    def reopen(rounds: int, tag: str) -> None:
        for it in range(rounds):
            page.goto(url)
            page.wait_for_function("typeof window.readRange === 'function'")
            for k, n in enumerate(names):
                cur = (root / n).read_bytes()
                size = len(cur)
                res = page.evaluate("([u, r]) => window.readRange(u, r)", [f"{url}results/{n}", f"bytes=-{TAIL}"])
                if err := _check_read(res, cur, (max(0, size - TAIL), size - 1)):
                    problems.append(f"{tag} {it} {n} suffix: {err}")
                start = ((it * 7 + k) % 9) * (size // 12)  # a few different ranges per file: several cached parts
                end = min(size - TAIL - 1, start + 30_000)
                res = page.evaluate("([u, r]) => window.readRange(u, r)", [f"{url}results/{n}", f"bytes={start}-{end}"])
                if err := _check_read(res, cur, (start, end)):
                    problems.append(f"{tag} {it} {n} range {start}-{end}: {err}")

    try:
        reopen(60, "before")
        cached = sum(1 for _, code, _h in request_log if code == 304)
        # rewrite in place: another size / the same size / replaced by rename (new inode); one unchanged
        with open(root / names[0], "r+b") as f:
            f.truncate(0)
            f.write(content(231_111))
        same = root / names[1]
        size1 = same.stat().st_size
        with open(same, "r+b") as f:
            f.write(content(size1))
        (root / ".new").write_bytes(content(250_000))
        os.replace(root / ".new", root / names[2])
        reopen(30, "after")
        with open(same, "r+b") as f:  # twice within a second: Last-Modified alone could not tell
            f.write(content(size1))
        reopen(30, "again")
    finally:
        server.shutdown()
        server.server_close()
    assert not problems, problems[:10]
    assert not errors, errors
    # the reads went through the cache: revalidated parts (304) before the rewrite, conditional requests
    assert cached > 0, "Chromium never revalidated a cached part: the test did not exercise the cache"
    assert any("if-none-match" in h or "if-range" in h for _, _, h in request_log)


def test_viewer_reopened_with_http_cache(tmp_path, cached_context, viewer_dist, request_log):
    """The real viewer reopened 70 times in one browser profile (cache on), its results rewritten in
    place between the 40th and the 41st: every opening shows the pair, from the current files."""
    from viewer_synth import make_results, read_pair

    ctx, errors = cached_context
    root = make_results(tmp_path / "a", seed=1, classes=12, assets=False)
    other = make_results(tmp_path / "b", seed=2, classes=12, assets=False)
    for f in root.rglob("*"):
        if f.is_file():
            set_mtime(f, 7200)
    server, url = start_server(root)
    page = ctx.new_page()
    page.set_default_timeout(15000)
    failures: list[str] = []

    def reopen(rounds: int, tag: str) -> None:
        for i in range(rounds):
            o, t = i % 3, (i * 7 + 1) % 12
            if o == t:
                t = (t + 1) % 12
            _, nodes, _ = read_pair(root, o, t)
            page.goto(f"{url}?original={o}&target={t}")
            page.wait_for_function("window.__bluff && window.__bluff.state !== 'loading'")
            state = page.evaluate("window.__bluff.state")
            if state != "ready":
                failures.append(f"{tag} {i} ({o}->{t}): {page.inner_text('body')[:300]!r}")
                continue
            page.wait_for_selector(f"svg#graph[data-pair='{o}-{t}'][data-state='ready']")
            n = page.locator("g.node").count()
            if n != len(nodes):
                failures.append(f"{tag} {i} ({o}->{t}): {n} neurons drawn, the files have {len(nodes)}")

    try:
        reopen(40, "before")
        cached = sum(1 for _, code, _h in request_log if code == 304)
        for f in other.rglob("*"):  # a new run's results, written over the old files in place
            if f.is_file():
                dst = root / f.relative_to(other)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(dst, "wb") as out:
                    out.write(f.read_bytes())
        reopen(30, "after rewrite")
    finally:
        server.shutdown()
        server.server_close()
    assert not failures, failures[:10]
    assert not errors, errors
    assert cached > 0, "the browser never revalidated a cached part: the test did not exercise the cache"
