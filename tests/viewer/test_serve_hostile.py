"""`bluff serve` under hostile requests: dot-files are never served, and every malformed request gets a
4xx status with one log line at most, never a traceback or a dropped connection."""

from __future__ import annotations

import re
import socket

import pytest

from bluff_ray.web.serve import parse_range, start_server


@pytest.fixture
def root_with_secrets(tmp_path):
    root = tmp_path / "results"
    (root / "nodes").mkdir(parents=True)
    (root / "manifest.json").write_text('{"schema_version": 1}')
    (root / "nodes" / "part-0.parquet").write_bytes(bytes(range(256)) * 4)
    (root / ".env").write_text("AWS_SECRET_ACCESS_KEY=topsecret-env")
    (root / ".aws").mkdir()
    (root / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = topsecret-aws\n")
    (root / ".bluff-lock.json").write_text('{"host": "topsecret-lock"}')
    (root / "nodes" / ".tmp-part.parquet").write_text("topsecret-partial")
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_text("<!doctype html><title>v</title>")
    (viewer / ".htpasswd").write_text("topsecret-viewer")
    return root, viewer


@pytest.fixture
def loud_server(root_with_secrets):
    root, viewer = root_with_secrets
    server, _ = start_server(root, viewer_dir=viewer, quiet=False)
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def exchange(addr, raw: bytes) -> bytes:
    """Send ``raw``, read until the server closes (every request here says Connection: close or is refused)."""
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def get(addr, target: str | bytes, *headers: str | bytes) -> tuple[int, bytes]:
    target = target.encode() if isinstance(target, str) else target
    lines = [
        b"GET " + target + b" HTTP/1.1",
        f"Host: 127.0.0.1:{addr[1]}".encode(),
        b"Connection: close",
        *(h.encode() if isinstance(h, str) else h for h in headers),
    ]
    resp = exchange(addr, b"\r\n".join(lines) + b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    assert m, resp[:200]  # an answer, not a dropped connection
    return int(m.group(1)), resp


@pytest.mark.parametrize(
    "path",
    [
        "/results/.env",
        "/results/.aws/credentials",
        "/results/.bluff-lock.json",
        "/results/nodes/.tmp-part.parquet",
        "/results/%2eenv",
        "/results/%2Eaws/credentials",
        "/results/nodes/../.env",
        "/results/./.env",
        "/.htpasswd",
    ],
)
def test_dot_files_are_never_served(loud_server, path):
    status, resp = get(loud_server, path)
    assert status == 404 and b"topsecret" not in resp


def test_regular_files_still_served(loud_server):
    status, resp = get(loud_server, "/results/nodes/part-0.parquet", "Range: bytes=0-3")
    assert status == 206 and resp.endswith(bytes([0, 1, 2, 3]))


HUGE = "9" * 5000  # past Python's 4300-digit limit for int(str)


@pytest.mark.parametrize(
    "target,headers,expected",
    [
        ("/results/nodes/part-0.parquet", [f"Range: bytes={HUGE}-"], 416),  # start past every file
        ("/results/nodes/part-0.parquet", [f"Range: bytes={HUGE}-{HUGE}"], 400),  # a header over 8190 bytes
        ("/results/nodes/part-0.parquet", [f"Range: bytes=0-{HUGE}"], 206),  # end clipped to the file
        ("/results/nodes/part-0.parquet", [f"Range: bytes=-{HUGE}"], 206),  # suffix longer than the file: all of it
        ("/results/" + "a" * 300 + "/x.parquet", [], 404),  # a path segment over 255 characters
        ("/results/" + "b" * 4000, [], 404),
        ("/results/" + "/".join(["c" * 250] * 30), [], 404),  # a path over PATH_MAX
        ("/results/%ff%fe.parquet", [], 400),  # percent-encoding that is not UTF-8
        ("/results/%zz", [], 404),  # not percent-encoding at all: a literal name that does not exist
        ("/results/%", [], 404),
        ("/results/a%00b", [], 404),
        (b"/results/a\x00b", [], 400),  # a raw NUL in the request line
        ("/results/manifest.json", ["X-Junk: " + "x" * 20000], 400),  # a header longer than any real one
        ("/results/manifest.json", [f"X-H{i}: v" for i in range(300)], 400),  # too many headers
        ("/results/manifest.json", [b"Bad Header Name: v"], 400),
        ("/results/manifest.json", [b"X-Ctl: a\x01b\x7f"], 400),
        ("/results/manifest.json", ["If-Modified-Since: Mon, 01 Jan 99999 00:00:00 GMT"], 200),  # ignored
        ("/results/manifest.json", ["If-Range: " + HUGE, "Range: bytes=0-1"], 200),  # not a validator: whole file
        ("/results/manifest.json", ['If-None-Match: "' + "x" * 6000], 200),
        ("*", [], 400),
    ],
)
def test_malformed_requests_get_4xx_and_no_traceback(loud_server, capfd, target, headers, expected):
    capfd.readouterr()
    status, _resp = get(loud_server, target, *headers)
    err = capfd.readouterr().err
    assert status == expected
    assert "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err  # the access line, and for a refusal by the parser, one more
    assert get(loud_server, "/results/manifest.json")[0] == 200  # and the server still serves


def test_parse_range_reads_numbers_of_any_length():
    assert parse_range(f"bytes={HUGE}-", 10) == "unsatisfiable"
    assert parse_range(f"bytes=2-{HUGE}", 10) == (2, 9)
    assert parse_range(f"bytes=-{HUGE}", 10) == (0, 9)
    assert parse_range(f"bytes={HUGE}-3", 10) is None  # end before start: ignored
