"""`bluff serve`: the built viewer and a local results root over HTTP, with byte ranges.

Why our own server: the viewer reads Parquet with HTTP range requests, and Python's
``http.server`` ignores ``Range`` (it always answers 200 with the whole file). This one is an
HTTP/1.1 range server:

- ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> 206 with ``Content-Range``; 416 for
  unsatisfiable ranges; anything else (several ranges, other units) -> 200 with the whole file.
- Validators: a strong ``ETag`` (inode, size and modification time in nanoseconds) and
  ``Last-Modified`` on every file; ``If-None-Match`` / ``If-Modified-Since`` -> 304 when unchanged;
  ``If-Match`` / ``If-Unmodified-Since`` -> 412 when changed; ``If-Range`` (an ETag, or a date equal
  to ``Last-Modified``) -> 206 only when it matches the current file. A range request whose
  validator says the client's copy is outdated gets 200 with the whole current file: browsers cache
  byte ranges and later complete or revalidate them with these headers, computing the range from
  the cached copy; a server that ignored them handed Chromium bytes of a rewritten file to splice
  into its copy of the old one, or to pass on as the file's end (the viewer then failed with
  "footer != PAR1").
- ``Cache-Control: no-cache``: a browser may keep what it read but must revalidate it on every use,
  so a results root rewritten by a new run is never shown stale. No ``Vary``: no response depends
  on a request header other than the ones above, which caches handle themselves.
- No ``Content-Encoding``, so byte ranges always refer to the stored bytes.

Safety: it binds 127.0.0.1 unless told otherwise, serves only files inside its two roots (no ``..``,
no symlink escapes, no directory listings), and, while bound to a loopback address, answers only
requests whose ``Host`` names a loopback address or ``localhost`` (any port; ``--allow-host`` adds
names): a web page that points its own DNS name at 127.0.0.1 (DNS rebinding) gets 421, not the
results. A connection that sends nothing for ``idle_timeout`` seconds is closed (its thread ends),
and a client that disconnects mid-response costs one log line, not a traceback.

URL layout:
- ``/``            the viewer (``bluff_ray/_viewer/``, built by ``make viewer``)
- ``/config.json`` ``{"root": "results/"}``: tells the viewer where the results are
- ``/results/...`` the results root
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import ipaddress
import json
import mimetypes
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VIEWER_DIR = Path(__file__).resolve().parents[1] / "_viewer"
RESULTS_PREFIX = "/results/"
CHUNK = 256 * 1024
IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent (between or inside requests)

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
_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


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


def file_etag(st: os.stat_result) -> str:
    """Strong entity tag of a file: changes whenever the file is replaced (inode), resized or written
    (modification time in nanoseconds)."""
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def parse_etags(header: str) -> list[tuple[bool, str]] | str:
    """``If-None-Match``/``If-Match`` -> ``"*"`` or [(weak, opaque-tag)]; unparsable members are dropped."""
    if header.strip() == "*":
        return "*"
    return [(bool(m.group(1)), m.group(2)) for m in _ETAG.finditer(header)]


def etag_matches(header: str, etag: str, weak: bool) -> bool:
    """Whether ``etag`` (strong, quoted) matches the header's list; ``weak``: weak comparison
    (``If-None-Match``), else strong comparison (``If-Match``: a ``W/`` tag never matches)."""
    tags = parse_etags(header)
    if tags == "*":
        return True
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date as a POSIX timestamp, or None when absent or invalid (the header is then ignored)."""
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None or dt.tzinfo is None:
        return None
    return dt.timestamp()


def if_range_matches(value: str, etag: str, mtime: float, now: float) -> bool:
    """RFC 9110 13.1.5: an entity tag must match strongly; a date must equal ``Last-Modified`` exactly,
    and counts only when the file was last written at least a second before now (otherwise another
    write within the same second would keep the same date: not a strong validator)."""
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return not value.startswith("W/") and value == etag
    date = parse_http_date(value)
    return date is not None and int(date) == int(mtime) and now - mtime >= 1.0


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, possibly bracketed, or a name) is a loopback address or localhost."""
    h = host.strip().strip("[]").lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The host part of a ``Host`` header value (port removed, IPv6 brackets removed), lower case;
    None when malformed."""
    h = header.strip().lower()
    if not h or any(c in h for c in " /@?#\\"):
        return None
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1:] and not re.fullmatch(r":\d*", h[end + 1:])):
            return None
        return h[1:end]
    name, sep, port = h.partition(":")
    if sep and not port.isdigit():
        return None
    return name.rstrip(".")


class _Handler(BaseHTTPRequestHandler):
    server_version = "bluff-serve"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, a kept-alive
    # connection then waits ~40 ms for the peer's delayed ACK on every response.
    disable_nagle_algorithm = True
    viewer_dir: Path
    results_dir: Path
    quiet: bool
    # StreamRequestHandler puts this timeout on the socket: a silent client ends its connection.
    timeout = IDLE_TIMEOUT
    check_host: bool = True
    allowed_hosts: frozenset = frozenset()

    def log_message(self, fmt, *args):  # noqa: D401 - http.server API
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def handle(self):
        """Serve the connection's requests; a client that goes away costs one log line."""
        try:
            super().handle()
        except _DISCONNECTS as e:
            self.close_connection = True
            self.log_message("client disconnected (%s)", type(e).__name__)

    def finish(self):
        try:
            super().finish()
        except _DISCONNECTS:
            pass  # already logged by handle(), or nothing was left to send

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

    def _host_refusal(self) -> tuple[HTTPStatus, str] | None:
        """(status, message) when the Host header must not be served, else None."""
        raw = self.headers.get("Host")
        if raw is None:
            if self.request_version == "HTTP/1.0":
                return None  # HTTP/1.0 clients may omit it; browsers never do
            return HTTPStatus.BAD_REQUEST, "missing Host header"
        if not self.check_host:
            return None
        name = host_name(raw)
        if name is not None and (is_loopback(name) or name in self.allowed_hosts):
            return None
        shown = raw.strip()[:100].encode("ascii", "replace").decode()
        return (HTTPStatus.MISDIRECTED_REQUEST,
                f"bluff serve: Host {shown!r} is not served. This server listens on a loopback address and "
                "answers only to localhost or a loopback address (a protection against DNS rebinding); "
                "start it with --allow-host NAME to add a name.")

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

    def _precondition(self, etag: str, mtime: float | None) -> HTTPStatus | None:
        """RFC 9110 13.2.2 steps 1-4 for GET/HEAD: 412, 304 or None (go on)."""
        h = self.headers
        if h.get("If-Match") is not None:
            if not etag_matches(h["If-Match"], etag, weak=False):
                return HTTPStatus.PRECONDITION_FAILED
        elif mtime is not None:
            ius = parse_http_date(h.get("If-Unmodified-Since"))
            if ius is not None and int(mtime) > ius:
                return HTTPStatus.PRECONDITION_FAILED
        if h.get("If-None-Match") is not None:
            if etag_matches(h["If-None-Match"], etag, weak=True):
                return HTTPStatus.NOT_MODIFIED
        elif mtime is not None:
            ims = parse_http_date(h.get("If-Modified-Since"))
            if ims is not None and int(mtime) <= ims:
                return HTTPStatus.NOT_MODIFIED
        return None

    def _stale_copy(self, etag: str, mtime: float) -> bool:
        """Whether a range request comes from a client whose copy of the file is another version.

        - ``If-Range`` that does not match (RFC 9110 13.1.5): the range must be ignored.
        - ``If-None-Match``/``If-Modified-Since`` that did not produce a 304: the client is revalidating
          a cached part, and its range may have been computed from the old file (Chromium turns the
          viewer's ``bytes=-16384`` into ``bytes=<old size - 16384>-<old size - 1>``). Bytes of that range
          of the new file would be spliced into the old copy, or handed to the page as if they were the
          file's end; the whole current file (200, allowed since a server may ignore ``Range``) is
          always right, and Chromium passes it through.
        """
        h = self.headers
        if_range = h.get("If-Range")
        if if_range is not None and not if_range_matches(if_range, etag, mtime, time.time()):
            return True
        return h.get("If-None-Match") is not None or parse_http_date(h.get("If-Modified-Since")) is not None

    def _validators(self, etag: str, mtime: float | None) -> None:
        self.send_header("ETag", etag)
        if mtime is not None:
            self.send_header("Last-Modified", self.date_time_string(int(mtime)))
        self.send_header("Cache-Control", "no-cache")

    def _not_modified_or_failed(self, status: HTTPStatus, etag: str, mtime: float | None, head: bool) -> None:
        if status == HTTPStatus.NOT_MODIFIED:
            self.send_response(status)  # no body, hence no Content-Length (RFC 9110 8.6)
            self._validators(etag, mtime)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
        else:
            self._error(status, "Precondition Failed: the file has changed", head, {"ETag": etag})

    def _serve(self, head: bool):
        refusal = self._host_refusal()
        if refusal is not None:
            self.close_connection = True
            return self._error(refusal[0], refusal[1], head, {"Connection": "close"})
        try:
            target, status, generated = self._resolve()
        except UnicodeDecodeError:
            return self._error(HTTPStatus.BAD_REQUEST, "bad URL encoding", head)
        if status is not None:
            return self._error(status, status.phrase, head)
        if generated is not None:
            etag = '"' + hashlib.sha256(generated).hexdigest()[:32] + '"'
            pre = self._precondition(etag, None)
            if pre is not None:
                return self._not_modified_or_failed(pre, etag, None, head)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(generated)))
            self._validators(etag, None)
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
            st = os.fstat(f.fileno())
            size, mtime, etag = st.st_size, st.st_mtime, file_etag(st)
            pre = self._precondition(etag, mtime)
            if pre is not None:
                return self._not_modified_or_failed(pre, etag, mtime, head)
            range_header = self.headers.get("Range")
            if range_header and self._stale_copy(etag, mtime):
                range_header = None  # the client's copy is another version: send the whole current file
            rng = parse_range(range_header, size)
            if rng == "unsatisfiable":
                return self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "Range Not Satisfiable",
                    head,
                    {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes", "ETag": etag},
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
            self._validators(etag, mtime)
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
            if left > 0:  # the file shrank while we sent it: the declared length cannot be met
                self.close_connection = True


class BluffServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (socketserver's default of 5 stalls bursts of connections)

    def handle_error(self, request, client_address):
        """A client that went away is not a server error: one line, no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (*_DISCONNECTS, TimeoutError)):
            if not getattr(self.RequestHandlerClass, "quiet", False):
                sys.stderr.write(f"{client_address[0]} - connection ended ({type(exc).__name__})\n")
            return
        super().handle_error(request, client_address)


def make_server(
    root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, viewer_dir: str | os.PathLike | None = None,
    quiet: bool = False, allow_hosts: list[str] | tuple[str, ...] = (), idle_timeout: float = IDLE_TIMEOUT,
) -> BluffServer:
    """A server (not yet running) for the results root ``root`` (a local folder).

    ``allow_hosts``: extra ``Host`` names answered while bound to a loopback address (localhost and
    loopback addresses always are). ``idle_timeout``: seconds a connection may stay silent before it
    is closed.
    """
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
    if idle_timeout is None or idle_timeout <= 0:
        raise ValueError(f"idle timeout must be > 0 seconds, got {idle_timeout}")
    allowed = frozenset(n for n in (host_name(a) for a in allow_hosts) if n)
    server_cls = BluffServer
    if ":" in host:  # an IPv6 address
        server_cls = type("BluffServer6", (BluffServer,), {"address_family": socket.AF_INET6})
    handler = type(
        "BluffHandler", (_Handler,),
        {"viewer_dir": vdir.resolve(), "results_dir": results.resolve(), "quiet": quiet,
         "timeout": float(idle_timeout), "allowed_hosts": allowed},
    )
    server = server_cls((host.strip("[]"), port), handler)
    # The Host check protects loopback listeners (DNS rebinding); on other addresses anyone who can
    # reach the port is already a client, whatever name they use.
    handler.check_host = is_loopback(str(server.server_address[0]))
    return server


def server_url(server: BluffServer) -> str:
    host, port = server.server_address[:2]
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def start_server(
    root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, viewer_dir: str | os.PathLike | None = None,
    quiet: bool = True, allow_hosts: list[str] | tuple[str, ...] = (), idle_timeout: float = IDLE_TIMEOUT,
) -> tuple[BluffServer, str]:
    """Run the server in a daemon thread (tests, notebooks); returns (server, base URL).

    Stop it with ``server.shutdown(); server.server_close()``. ``port=0`` picks a free port.
    """
    server = make_server(root, host, port, viewer_dir, quiet=quiet, allow_hosts=allow_hosts, idle_timeout=idle_timeout)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="bluff-serve", daemon=True).start()
    return server, server_url(server)


def serve(root: str, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False,
          allow_hosts: list[str] | tuple[str, ...] = (), idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Serve ``root`` and the viewer until Ctrl-C."""
    server = make_server(root, host, port, allow_hosts=allow_hosts, idle_timeout=idle_timeout)
    url = server_url(server)
    if not is_loopback(str(server.server_address[0])):
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
        serve(args.results, host=args.host, port=args.port, open_browser=args.open,
              allow_hosts=args.allow_host, idle_timeout=args.idle_timeout)
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
            "support the viewer needs to read single pairs out of the Parquet files (206/416, ETag and "
            "Last-Modified validators, If-Range, 304). Binds 127.0.0.1 by default, serves nothing outside the "
            "two folders and, on a loopback address, only requests for localhost or a loopback address. Open "
            "the printed URL; ?original=..&target=.. in the URL opens a pair directly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", help="local results root (the folder with manifest.json)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind; anything but 127.0.0.1/localhost exposes the results to the network",
    )
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; any port), e.g. a name in /etc/hosts "
        "that points at 127.0.0.1; localhost and loopback addresses are always answered",
    )
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="SECONDS",
                   help="close a connection that sends nothing for this long")
    p.add_argument("--open", action="store_true", help="open the viewer in the default web browser")
    p.set_defaults(func=_run)
    return p
