"""`bluff serve`: byte ranges, HEAD, content types, and refusal of paths outside its two roots."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys

import pytest

from bluff_ray.serve import ViewerNotBuilt, make_server, parse_range, start_server


@pytest.fixture
def served(tmp_path):
    """A results root with a known file, a symlink escaping it, and a fake built viewer."""
    root = tmp_path / "results"
    (root / "nodes" / "original=0").mkdir(parents=True)
    data = bytes(range(256)) * 40  # 10240 bytes, every offset identifiable
    (root / "nodes" / "original=0" / "part-0.parquet").write_bytes(data)
    (root / "manifest.json").write_text('{"schema_version": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    os.symlink(secret, root / "escape.txt")
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_text("<!doctype html><title>v</title>")
    server, url = start_server(root, viewer_dir=viewer)
    host, port = server.server_address[:2]
    yield host, port, data
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
    path = "/results/nodes/original=0/part-0.parquet"
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
    path = "/results/nodes/original=0/part-0.parquet"
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
    r, body = request(host, port, "HEAD", "/results/nodes/original=0/part-0.parquet")
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
    for word in ("RESULTS", "--port", "--host", "--open", "127.0.0.1"):
        assert word in out
