"""`bluff serve`: the built viewer and a local results root over HTTP, with byte ranges.

Why our own server: the viewer reads Parquet with HTTP range requests, and Python's
``http.server`` ignores ``Range`` (it always answers 200 with the whole file). This one answers
206 with ``Content-Range``, 416 for unsatisfiable ranges, and HEAD. It binds 127.0.0.1 unless told
otherwise, serves only files inside its two roots (no ``..``, no symlink escapes, no directory
listings), and never adds ``Content-Encoding``, so byte ranges always refer to the stored bytes.

URL layout:
- ``/``            the viewer (``bluff_ray/_viewer/``, built by ``make viewer``)
- ``/config.json`` ``{"root": "results/"}``: tells the viewer where the results are
- ``/results/...`` the results root
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import sys
import threading
import urllib.parse
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VIEWER_DIR = Path(__file__).resolve().parent / "_viewer"
RESULTS_PREFIX = "/results/"
CHUNK = 256 * 1024

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".map": "application/json",
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ViewerNotBuilt(FileNotFoundError):
    """``bluff_ray/_viewer/index.html`` is missing."""


def content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``Range`` header -> inclusive (start, end), ``None`` (serve the whole file) or ``"unsatisfiable"``.

    A header we do not understand (other units, several ranges, bad syntax) is ignored, as RFC 9110
    allows: the client then gets 200 with the whole body.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if last != "" and end < start:
        return None  # syntactically invalid: ignore
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def safe_join(root: Path, rel: str) -> Path | None:
    """The file ``rel`` (already URL-decoded, '/'-separated) under ``root``, or None if it would escape.

    Rejects ``..`` segments, NUL bytes and backslashes outright, then checks the fully resolved path
    (symlinks followed) is still inside the resolved root.
    """
    if "\x00" in rel or "\\" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    root_real = root.resolve()
    candidate = (root_real.joinpath(*parts)).resolve() if parts else root_real
    try:
        candidate.relative_to(root_real)
    except ValueError:
        return None
    return candidate


class _Handler(BaseHTTPRequestHandler):
    server_version = "bluff-serve"
    protocol_version = "HTTP/1.1"
    viewer_dir: Path
    results_dir: Path
    quiet: bool

    def log_message(self, fmt, *args):  # noqa: D401 - http.server API
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _error(self, status: HTTPStatus, message: str, head: bool, extra: dict | None = None):
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _resolve(self) -> tuple[Path | None, HTTPStatus | None, bytes | None]:
        """-> (file, error status, generated body)."""
        raw = urllib.parse.urlsplit(self.path).path
        path = urllib.parse.unquote(raw, errors="strict")
        if not path.startswith("/"):
            return None, HTTPStatus.BAD_REQUEST, None
        if path == "/config.json":
            return None, None, json.dumps({"root": RESULTS_PREFIX.lstrip("/")}).encode()
        if path.startswith(RESULTS_PREFIX) or path == RESULTS_PREFIX.rstrip("/"):
            root, rel = self.results_dir, path[len(RESULTS_PREFIX):]
        else:
            root, rel = self.viewer_dir, path.lstrip("/")
            if rel == "":
                rel = "index.html"
        target = safe_join(root, rel)
        if target is None:
            return None, HTTPStatus.FORBIDDEN, None
        if not target.is_file():
            return None, HTTPStatus.NOT_FOUND, None
        return target, None, None

    def _serve(self, head: bool):
        try:
            target, status, generated = self._resolve()
        except UnicodeDecodeError:
            return self._error(HTTPStatus.BAD_REQUEST, "bad URL encoding", head)
        if status is not None:
            return self._error(status, status.phrase, head)
        if generated is not None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(generated)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if not head:
                self.wfile.write(generated)
            return
        assert target is not None
        try:
            f = open(target, "rb")
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "Not Found", head)
        with f:
            size = os.fstat(f.fileno()).st_size
            rng = parse_range(self.headers.get("Range"), size)
            if rng == "unsatisfiable":
                return self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "Range Not Satisfiable",
                    head,
                    {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
                )
            if rng is None:
                start, end, status = 0, size - 1, HTTPStatus.OK
            else:
                start, end = rng  # type: ignore[misc]
                status = HTTPStatus.PARTIAL_CONTENT
            length = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Content-Type", content_type(str(target)))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Last-Modified", self.date_time_string(int(os.fstat(f.fileno()).st_mtime)))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class BluffServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(
    root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, viewer_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> BluffServer:
    """A server (not yet running) for the results root ``root`` (a local folder)."""
    root_s = os.fspath(root)
    if "://" in root_s and not root_s.startswith("file://"):
        raise ValueError(
            f"bluff serve needs a local results folder, got {root_s!r}; to browse results on S3, "
            "run `bluff publish` and open the printed viewer URL"
        )
    if root_s.startswith("file://"):
        root_s = root_s[len("file://"):]
    results = Path(root_s).expanduser()
    if not results.is_dir():
        raise FileNotFoundError(f"results folder not found: {results}")
    if not (results / "manifest.json").is_file():
        print(f"warning: {results} has no manifest.json yet; the viewer will say so", file=sys.stderr)
    vdir = Path(viewer_dir) if viewer_dir is not None else VIEWER_DIR
    if not (vdir / "index.html").is_file():
        raise ViewerNotBuilt(
            f"the viewer is not built ({vdir / 'index.html'} is missing): run `make viewer` "
            "(or `cd viewer && npm ci && npm run build`)"
        )
    handler = type(
        "BluffHandler", (_Handler,), {"viewer_dir": vdir.resolve(), "results_dir": results.resolve(), "quiet": quiet}
    )
    return BluffServer((host, port), handler)


def server_url(server: BluffServer) -> str:
    host, port = server.server_address[:2]
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def start_server(
    root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, viewer_dir: str | os.PathLike | None = None,
    quiet: bool = True,
) -> tuple[BluffServer, str]:
    """Run the server in a daemon thread (tests, notebooks); returns (server, base URL).

    Stop it with ``server.shutdown(); server.server_close()``. ``port=0`` picks a free port.
    """
    server = make_server(root, host, port, viewer_dir, quiet=quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="bluff-serve", daemon=True).start()
    return server, server_url(server)


def serve(root: str, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False) -> None:
    """Serve ``root`` and the viewer until Ctrl-C."""
    server = make_server(root, host, port)
    url = server_url(server)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine can read the results", file=sys.stderr)
    print(f"Bluff viewer: {url}  (results: {Path(root).resolve()}; Ctrl-C stops)", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _run(args: argparse.Namespace) -> int:
    try:
        serve(args.results, host=args.host, port=args.port, open_browser=args.open)
    except (FileNotFoundError, ValueError) as e:
        print(f"bluff serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use, permission denied
        print(f"bluff serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``bluff serve`` to the CLI's subparsers; the parser's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "serve",
        help="browse a local results folder in the viewer",
        description=(
            "Serve the built viewer at / and the results folder at /results/ over HTTP, with the byte-range "
            "support the viewer needs to read single pairs out of the Parquet files. Binds 127.0.0.1 by default "
            "and serves nothing outside the two folders. Open the printed URL; ?original=..&target=.. in the URL "
            "opens a pair directly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", help="local results root (the folder with manifest.json)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind; anything but 127.0.0.1/localhost exposes the results to the network",
    )
    p.add_argument("--open", action="store_true", help="open the viewer in the default web browser")
    p.set_defaults(func=_run)
    return p

