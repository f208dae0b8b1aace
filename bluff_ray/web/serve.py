"""`bluff serve`: the built viewer and a local results root over HTTP, with byte ranges.

aiohttp's ``FileResponse`` does the HTTP work: ``Range`` (206, 416 with ``Content-Range: bytes */size``),
strong ``ETag`` (modification time in nanoseconds and size) and ``Last-Modified``, ``If-None-Match``/
``If-Modified-Since`` -> 304, ``If-Match``/``If-Unmodified-Since`` -> 412, sendfile. This module adds
only what it does not do (each marked where it is done):

- ranges it would refuse but RFC 9110 lets a server ignore (several ranges, other units, ``5-2``) get
  200 with the whole file, and numbers of any length are read without error;
- ``If-Range`` with an entity tag (aiohttp understands only dates), and a date counts only when it
  equals ``Last-Modified`` and the file is at least a second old (a strong validator);
- a range request that revalidates a cached part (``If-None-Match``/``If-Modified-Since`` without a
  304) gets the whole current file: Chromium computes such ranges from its cached copy, and bytes of
  a rewritten file spliced into the old copy broke the viewer ("footer != PAR1");
- dates compared at whole seconds, as ``Last-Modified`` states them;
- ``Cache-Control: no-cache`` (a results root rewritten by a new run is never shown stale) and no
  ``Content-Encoding`` (aiohttp would send a ``.gz``/``.br`` sibling; byte ranges must refer to the
  stored bytes);
- safety: it binds 127.0.0.1 unless told otherwise; serves only files inside its two roots (no
  ``..``, no symlink escapes, no directory listings) and no dot-file or dot-folder (``.env``,
  ``.aws/``, ``.bluff-lock.json``: never part of the results, and ``bluff publish`` skips them too);
  while bound to a loopback address it answers only requests whose ``Host`` names a loopback address
  or ``localhost`` (``--allow-host`` adds names): a page that points its own DNS name at 127.0.0.1
  (DNS rebinding) gets 421. A malformed request gets a 4xx and one log line, never a traceback; a
  connection silent for ``idle_timeout`` seconds is closed (aiohttp's keep-alive timer, which also
  covers a request that never ends), and so is one whose client stops reading a file for as long
  (``_StallWatch``: aiohttp has no write timeout).

URL layout: ``/`` the viewer (``bluff_ray/_viewer/``, built by ``make viewer``); ``/config.json``
``{"root": "results/"}`` (tells the viewer where the results are); ``/results/...`` the results root.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import mimetypes
import os
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
import webbrowser
from email.utils import formatdate
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDict

VIEWER_DIR = Path(__file__).resolve().parents[1] / "_viewer"
RESULTS_PREFIX = "/results/"
IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent (between or inside requests)
CONFIG = json.dumps({"root": RESULTS_PREFIX.lstrip("/")}).encode()

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
_HUGE = 1 << 62  # any number longer than 18 digits: past the end of every file


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
    m = _RANGE.match(header.strip()) if header else None
    if not m or m.group(1) == m.group(2) == "":
        return None
    first, last = (int(g) if len(g) <= 18 else _HUGE for g in (m.group(1) or "0", m.group(2) or "0"))
    if m.group(1) == "":  # suffix: the last N bytes
        return "unsatisfiable" if last == 0 or size == 0 else (max(0, size - last), size - 1)
    if m.group(2) != "" and last < first:
        return None  # syntactically invalid: ignore
    end = size - 1 if m.group(2) == "" else last
    return "unsatisfiable" if first >= size else (first, min(end, size - 1))


def safe_join(root: Path, rel: str) -> Path | None:
    """The file ``rel`` (URL-decoded, '/'-separated) under ``root``, or None if it is not to be served:
    NUL bytes, backslashes, ``..``, dot-files and dot-folders, names the OS refuses (too long), or a
    resolved path (symlinks followed) outside the resolved root."""
    if "\x00" in rel or "\\" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p.startswith(".") for p in parts):
        return None
    try:
        root_real = root.resolve()
        candidate = root_real.joinpath(*parts).resolve()
        candidate.relative_to(root_real)
        return candidate if candidate.is_file() else None
    except (OSError, ValueError):  # ENAMETOOLONG, a loop of links, or outside the root
        return None


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
    """The host part of a ``Host`` header value (port and IPv6 brackets removed), lower case; None
    when malformed."""
    h = header.strip().lower()
    if not h or any(c in h for c in " /@?#\\"):
        return None
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not re.fullmatch(r":\d*", h[end + 1 :])):
            return None
        return h[1:end]
    name, sep, port = h.partition(":")
    if sep and not port.isdigit():
        return None
    return name.rstrip(".")


class _StderrLine(logging.Handler):
    """One line per record on the current stderr: a client's bad request is not a server traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        tail = f" ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})" if exc else ""
        print(record.getMessage()[:500] + tail, file=sys.stderr, flush=True)


class _AccessLog(AbstractAccessLogger):
    """One line per request, and one more when the client went away mid-response."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        v = request.version
        self.logger.info(
            '%s - "%s %s HTTP/%d.%d" %d %s',
            request.remote,
            request.method,
            request.raw_path[:300],
            v.major,
            v.minor,
            response.status,
            response.body_length or "-",
        )
        if gone := getattr(response, "disconnected", None):
            self.logger.info("%s - client disconnected (%s)", request.remote, gone)


def _unsent(fd: int) -> int | None:
    """Bytes the kernel still holds for the peer of socket ``fd`` (``SIOCOUTQ``); None where the
    platform cannot say."""
    try:
        import fcntl
        import termios

        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (ImportError, AttributeError, OSError):
        return None


class _StallWatch:
    """Closes a connection whose client stopped reading: the kernel's send queue for it holds the same
    non-zero byte count for ``idle`` seconds. Hand-written because aiohttp has no write timeout (its
    keep-alive timer runs only between requests): such a client would hold its connection and its
    open file for good. A timer callback, not a task: a small file is sent before its first check."""

    def __init__(self, transport: asyncio.Transport, idle: float) -> None:
        self.fired = False
        self._sender = asyncio.current_task()  # the task sending the file: cancelled on a stall
        self._transport = transport
        self._sock = transport.get_extra_info("socket")
        self._fd = self._sock.fileno() if self._sock is not None else -1
        self._idle, self._step = idle, idle / 4
        self._loop = asyncio.get_running_loop()
        self._last: int | None = None
        self._since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self._step, self._check)

    def _check(self) -> None:
        queued, now = _unsent(self._fd), self._loop.time()
        if queued is None:  # the platform cannot say: no watch
            self._timer = None
            return
        if not queued or queued != self._last:
            self._last, self._since = queued, now
        elif now - self._since >= self._idle:
            # Cancel the send (asyncio's sendfile then gives the socket back to the transport), not
            # the transport: aborting it under a running sendfile leaves the send waiting.
            self.fired = True
            self._timer = None
            if self._sender is not None:
                self._sender.cancel()
            return
        self._timer = self._loop.call_later(self._step, self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def reset(self) -> None:
        """After the cancelled send: close with a reset (the kernel need not keep the queued bytes
        for a client that reads none)."""
        if self._sock is not None:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()


class _File(web.FileResponse):
    """A ``FileResponse`` prepared against the request with the headers the handler rewrote (aiohttp
    would prepare it against the original request), sent under a :class:`_StallWatch`."""

    def __init__(self, path: Path, view: web.BaseRequest, idle_timeout: float) -> None:
        super().__init__(path, headers={"Content-Type": content_type(path.name), "Cache-Control": "no-cache"})
        self._view = view
        self._idle = idle_timeout
        self.disconnected: str | None = None

    @property
    def last_modified(self):
        return web.StreamResponse.last_modified.fget(self)  # type: ignore[attr-defined]

    @last_modified.setter
    def last_modified(self, value) -> None:
        # aiohttp rounds up: Last-Modified would be later than the file (and the Date) by up to a second
        web.StreamResponse.last_modified.fset(self, int(value) if isinstance(value, float) else value)  # type: ignore[attr-defined]

    async def prepare(self, request):
        transport = self._view.transport
        watch = _StallWatch(transport, self._idle) if transport is not None else None
        try:
            return await super().prepare(self._view)
        except asyncio.CancelledError:
            if watch is None or not watch.fired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            watch.reset()
            self.disconnected = f"it read nothing for {self._idle:g} s"
            raise ConnectionResetError(self.disconnected) from None
        except ConnectionError as e:  # aiohttp ends the connection; the access log says so in one line
            self.disconnected = type(e).__name__
            raise
        finally:
            if watch is not None:
                watch.cancel()


def _http_date(ts: int) -> str:
    return formatdate(ts, usegmt=True)


def _rewrite_headers(request: web.BaseRequest, st: os.stat_result) -> CIMultiDict[str]:
    """The request's headers with the conditional and range headers turned into what aiohttp, given
    them, answers as this server must (see the module docstring)."""
    h = request.headers.copy()
    h.popall("Accept-Encoding", None)
    mtime = int(st.st_mtime)
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # aiohttp's tag
    for name, date in (
        ("If-Modified-Since", request.if_modified_since),
        ("If-Unmodified-Since", request.if_unmodified_since),
    ):
        if date is not None and mtime <= date.timestamp():  # whole seconds, as Last-Modified says
            h[name] = _http_date(mtime + 1)
    if_range = h.popall("If-Range", [None])[0]
    if "Range" in h:
        if if_range is None:
            current = True
        elif if_range.strip().startswith(('"', "W/")):
            current = if_range.strip() == etag
        else:
            date = request.if_range
            current = date is not None and int(date.timestamp()) == mtime and time.time() - st.st_mtime >= 1
        revalidating = "If-None-Match" in h or request.if_modified_since is not None
        rng = parse_range(h["Range"], st.st_size) if current and not revalidating else None
        if rng is None:
            del h["Range"]
        else:
            h["Range"] = f"bytes={st.st_size}-" if rng == "unsatisfiable" else f"bytes={rng[0]}-{rng[1]}"
    return h


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


def make_handler(
    viewer_dir: Path, results_dir: Path, allowed_hosts: frozenset[str], check_host: bool, idle_timeout: float
):
    """The request handler: Host check, then ``/config.json``, a results file or a viewer file."""
    config_etag = '"' + hashlib.sha256(CONFIG).hexdigest()[:32] + '"'

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        raw_host = request.headers.get("Host")
        if raw_host is None and request.version >= (1, 1):
            return _text(400, "missing Host header")
        name = host_name(raw_host) if raw_host is not None else None
        if check_host and raw_host is not None and not (name and (is_loopback(name) or name in allowed_hosts)):
            shown = raw_host.strip()[:100].encode("ascii", "replace").decode()
            resp = _text(
                421,
                f"bluff serve: Host {shown!r} is not served. This server listens on a loopback "
                "address and answers only to localhost or a loopback address (a protection against DNS "
                "rebinding); start it with --allow-host NAME to add a name.",
            )
            resp.force_close()
            return resp
        if request.method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed", Allow="GET, HEAD")
        try:
            path = urllib.parse.unquote(urllib.parse.urlsplit(request.raw_path).path, errors="strict")
        except UnicodeDecodeError:
            return _text(400, "bad URL encoding")
        if not path.startswith("/"):
            return _text(400, "Bad Request")
        if path == "/config.json":
            tags = request.if_none_match or ()
            status = 304 if any(t.value == "*" or f'"{t.value}"' == config_etag for t in tags) else 200
            return web.Response(
                status=status,
                body=CONFIG if status == 200 else None,
                headers={"Content-Type": "application/json", "ETag": config_etag, "Cache-Control": "no-cache"},
            )
        if path.startswith(RESULTS_PREFIX):
            target = safe_join(results_dir, path[len(RESULTS_PREFIX) :])
        else:
            target = safe_join(viewer_dir, path.lstrip("/") or "index.html")
        try:
            st = target.stat() if target is not None else None
        except OSError:
            st = None
        if target is None or st is None:
            return _text(404, "Not Found")
        return _File(target, request.clone(headers=_rewrite_headers(request, st)), idle_timeout)

    return handle


class BluffServer:
    """A bound socket and the aiohttp server behind it, with ``http.server``'s control methods:
    ``serve_forever()`` (blocks), ``shutdown()`` (from another thread: stop and wait),
    ``server_close()``."""

    def __init__(self, sock: socket.socket, web_server: web.Server, loop: asyncio.AbstractEventLoop) -> None:
        self.socket = sock
        self.server_address = sock.getsockname()
        self._web = web_server
        self._loop = loop
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    def serve_forever(self) -> None:
        loop = self._loop
        runner = web.ServerRunner(self._web, handle_signals=False, shutdown_timeout=2.0)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, self.socket).start())
            self._stop = asyncio.Event()
            self._started.set()
            loop.run_until_complete(self._stop.wait())
        finally:
            self._started.set()
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            self._done.set()

    def connections(self) -> int:
        """Open client connections (idle ones included)."""
        return len(self._web.connections)

    def shutdown(self) -> None:
        self._started.wait()
        if not self._done.is_set():
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._done.wait()

    def server_close(self) -> None:
        self.socket.close()


def make_server(
    root: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    viewer_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    allow_hosts: list[str] | tuple[str, ...] = (),
    idle_timeout: float = IDLE_TIMEOUT,
) -> BluffServer:
    """A server, bound but not yet running, for the results root ``root`` (a local folder).

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
    results = Path(root_s.removeprefix("file://")).expanduser()
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
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=128)
    # this server's own logger (not in logging's registry: quiet or not per server), one line per record
    logger = logging.Logger("bluff serve", logging.CRITICAL + 1 if quiet else logging.INFO)  # noqa: LOG001
    logger.addHandler(_StderrLine())
    # The Host check protects loopback listeners (DNS rebinding); on other addresses anyone who can
    # reach the port is already a client, whatever name they use.
    handler = make_handler(
        vdir.resolve(),
        results.resolve(),
        frozenset(n for n in map(host_name, allow_hosts) if n),
        check_host=is_loopback(str(sock.getsockname()[0])),
        idle_timeout=float(idle_timeout),
    )
    loop = asyncio.new_event_loop()
    web_server = web.Server(
        handler,
        logger=logger,
        access_log=logger,
        access_log_class=_AccessLog,
        keepalive_timeout=float(idle_timeout),
        loop=loop,
    )
    return BluffServer(sock, web_server, loop)


def server_url(server: BluffServer) -> str:
    host, port = server.server_address[:2]
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def start_server(
    root: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 0,
    viewer_dir: str | os.PathLike | None = None,
    quiet: bool = True,
    allow_hosts: list[str] | tuple[str, ...] = (),
    idle_timeout: float = IDLE_TIMEOUT,
) -> tuple[BluffServer, str]:
    """Run the server in a daemon thread (tests, notebooks); returns (server, base URL).

    Stop it with ``server.shutdown(); server.server_close()``. ``port=0`` picks a free port.
    """
    server = make_server(root, host, port, viewer_dir, quiet=quiet, allow_hosts=allow_hosts, idle_timeout=idle_timeout)
    threading.Thread(target=server.serve_forever, name="bluff-serve", daemon=True).start()
    server._started.wait()
    return server, server_url(server)


def serve(
    root: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    open_browser: bool = False,
    allow_hosts: list[str] | tuple[str, ...] = (),
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
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
        serve(
            args.results,
            host=args.host,
            port=args.port,
            open_browser=args.open,
            allow_hosts=args.allow_host,
            idle_timeout=args.idle_timeout,
        )
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
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but 127.0.0.1/localhost exposes the results to the network",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; any port), e.g. a name in /etc/hosts "
        "that points at 127.0.0.1; localhost and loopback addresses are always answered",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that sends nothing for this long (or stops reading a file for this long)",
    )
    p.add_argument("--open", action="store_true", help="open the viewer in the default web browser")
    p.set_defaults(func=_run)
    return p
