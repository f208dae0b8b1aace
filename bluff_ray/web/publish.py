"""`bluff publish`: host a results root and the viewer on S3 (or any S3-compatible store).

Layout written under ``dest`` (e.g. ``s3://bucket/prefix``)::

    <dest>/runs/<id>/manifest.json, classes.parquet, pair_index/, nodes/, ...   one complete copy (docs/FORMAT.md)
    <dest>/runs/<id>/viewer/index.html, assets/..., config.json ({"root": "../"})
    <dest>/current.json       {"run": "runs/<id>/", ...}: the current copy, for programs
    <dest>/index.html         the viewer, loading its assets and results from runs/<id>/  <- written last
    <dest>/viewer/index.html  a redirect to ../index.html (links made before this layout)

Why a new prefix per publish and a pointer written last: objects go up one by one, so writing over
the previous copy showed a mix of two runs (or a 404) to anyone opening the viewer meanwhile. Here
nothing reachable changes until ``index.html`` (one PUT: S3 replaces an object atomically) names the
new copy; an interrupted publish leaves the old copy live and a partial prefix that nothing points
at. After the switch every other ``runs/*`` prefix is deleted (stale objects of an older run, and
leftovers of interrupted publishes). Shareable links are ``<dest>/index.html?original=..`` and
always open the current copy. A root whose run is not finished (no ``finished`` time in its
manifest, or a run lock present) is refused unless forced; any failure is one line, exit 2.

Why each setting:
- one PUT per object with an explicit ``Content-Type`` and no ``Content-Encoding``: byte ranges
  must refer to the stored bytes, which gzip encoding would break;
- objects readable anonymously (``public-read`` ACL; where the bucket refuses ACLs, a bucket policy
  granting ``s3:GetObject`` on the prefix);
- a CORS rule allowing GET/HEAD from any origin with any request header (``Range``), exposing
  ``Content-Range``, ``Content-Length`` and ``ETag`` (``Content-Range`` is not CORS-safelisted, and
  the viewer reads file sizes from it).

Only the results are uploaded: dot-files and dot-folders (``.bluff-lock.json``, ``.tmp-*`` partial
writes, ``.git/``...) are skipped, and so are symbolic links whose target resolves outside the
results root (a link must not make a file elsewhere on the machine public); the command says how
many entries it skipped and names each skipped link.

Credentials come from the standard AWS settings or ``storage_options`` (``key``, ``secret``,
``token``, ``endpoint_url``, ``client_kwargs``); they are used for the upload and never printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import posixpath
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from bluff_ray.results.layout import LOCK_PATH
from bluff_ray.results.store import StorageError, Store, open_url, redact_url
from bluff_ray.web.serve import VIEWER_DIR, content_type

CORS_RULE = {
    "ID": "bluff-viewer",
    "AllowedMethods": ["GET", "HEAD"],
    "AllowedOrigins": ["*"],
    "AllowedHeaders": ["*"],
    "ExposeHeaders": ["Content-Range", "Content-Length", "ETag"],
    "MaxAgeSeconds": 3600,
}
_SINGLE_PUT = 4 * 2**30  # s3fs uses one PutObject below 2 * chunksize


RUNS = "runs"  # <dest>/runs/<publish id>/: one complete copy each (results and viewer)
POINTER = "index.html"  # the viewer, reading the current copy: written last (the commit point)
CURRENT = "current.json"  # the current copy, for programs: {"run": "runs/<id>/", ...}
LEGACY_VIEWER = "viewer/index.html"  # where earlier versions put the viewer: now a redirect to the pointer
REDIRECT_HTML = (
    '<!doctype html><meta charset="utf-8"><title>Bluff</title>'
    '<script>location.replace("../index.html" + location.search + location.hash)</script>'
    '<a href="../index.html">Bluff viewer</a>\n'
)


class PublishError(RuntimeError):
    """The results or the destination cannot be used; the message says why."""


@dataclass
class Skipped:
    """A file under the results root that was not published, and why."""

    rel: str
    reason: str


@dataclass
class PublishReport:
    viewer_url: str
    objects: int = 0
    bytes: int = 0
    acl: str = "none"  # "public-read", "bucket-policy" or "none"
    cors: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # files under the results root not uploaded
    run: str = ""  # the prefix this publish wrote, "runs/<id>/"
    removed: int = 0  # objects of older publishes deleted

    def skipped_summary(self) -> str:
        """What was skipped, by kind: e.g. "2 dot-files/folders, 1 temporary file, 1 link leaving the root"."""
        kinds: dict[str, int] = {}
        for sk in self.skipped:
            kinds[_kind(sk.reason)] = kinds.get(_kind(sk.reason), 0) + 1
        return ", ".join(f"{n} {_KINDS[k][n != 1]}" for k, n in kinds.items())


_KINDS = {
    "dot": ("dot-file/folder", "dot-files/folders"),
    "tmp": ("temporary file", "temporary files"),
    "outside": ("symbolic link leaving the root", "symbolic links leaving the root"),
    "broken": ("broken symbolic link", "broken symbolic links"),
    "other": ("other entry", "other entries"),
}


def _kind(reason: str) -> str:
    if reason == "temporary file":
        return "tmp"
    if reason == "dot-file or dot-folder":
        return "dot"
    if "outside the results root" in reason:
        return "outside"
    if reason.startswith("broken"):
        return "broken"
    return "other"


def cache_control(rel: str) -> str:
    """Objects under ``runs/<id>/`` are never rewritten (a new publish writes a new prefix): cached for
    good. The pointers change with every publish: revalidated on every use."""
    return "public, max-age=31536000, immutable" if rel.startswith(RUNS + "/") else "no-cache"


def _hidden(rel: str) -> bool:
    """A dot-file or a file inside a dot-folder (``.bluff-lock.json``, ``.tmp-*`` partial writes,
    ``.git/``, ``.DS_Store``...): never part of the results."""
    return any(part.startswith(".") for part in rel.split("/"))


def _walk_local(root: str) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """(rel, real path) of every file to publish under a local ``root``, and what was skipped.

    Symbolic links (to files or folders) are followed only when their target resolves inside the
    root: a link to a file elsewhere on the machine must not become public. A folder link back to
    one of its own ancestors (a loop) is not followed.
    """
    root_real = os.path.realpath(root)
    files: list[tuple[str, str]] = []
    skipped: list[Skipped] = []

    def inside(real: str) -> bool:
        return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)

    def visit(folder: str, rel_folder: str, ancestors: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(rel_folder or ".", f"unreadable folder ({e.strerror})"))
            return
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if entry.name.startswith("."):
                kind = "temporary file" if entry.name.startswith(".tmp-") else "dot-file or dot-folder"
                skipped.append(Skipped(rel + ("/" if entry.is_dir(follow_symlinks=False) else ""), kind))
                continue
            if rel == "viewer":
                continue  # a stale viewer copy: the current one is uploaded instead
            real = os.path.realpath(entry.path)
            if entry.is_symlink():
                if not os.path.exists(real):
                    skipped.append(Skipped(rel, f"broken symbolic link (to {os.readlink(entry.path)})"))
                    continue
                if not inside(real):
                    skipped.append(Skipped(rel, f"symbolic link to {real}, outside the results root"))
                    continue
            if os.path.isdir(real):
                if real not in ancestors:
                    visit(real, rel, ancestors + (real,))
            elif os.path.isfile(real):
                files.append((rel, real))
            else:
                skipped.append(Skipped(rel, "not a regular file"))

    visit(root_real, "", (root_real,))
    return sorted(files), skipped


def _walk(fs, root: str) -> tuple[list[str], list[Skipped]]:
    """Relative paths of every file under ``root`` of a remote filesystem (no symbolic links there),
    skipping dot-files/folders and a stale viewer/ copy; and what was skipped."""
    out, skipped = [], []
    for path in fs.find(root):
        rel = posixpath.relpath(path, root)
        if rel.startswith("viewer/"):
            continue
        if _hidden(rel):
            name = rel.rsplit("/", 1)[-1]
            skipped.append(Skipped(rel, "temporary file" if name.startswith(".tmp-") else "dot-file or dot-folder"))
            continue
        out.append(rel)
    return sorted(out), skipped


def _viewer_files(viewer_dir: Path) -> list[tuple[str, Path]]:
    if not (viewer_dir / "index.html").is_file():
        raise PublishError(f"the viewer is not built ({viewer_dir / 'index.html'} is missing): run `make viewer` first")
    return sorted(
        (p.relative_to(viewer_dir).as_posix(), p)
        for p in viewer_dir.rglob("*")
        if p.is_file() and p.name != "config.json"
    )


def _boto_client(storage_options: dict):
    """A boto3 S3 client with the same endpoint and credentials as the s3fs filesystem."""
    import boto3

    so = dict(storage_options or {})
    ck = dict(so.get("client_kwargs") or {})
    kwargs: dict[str, Any] = {}
    endpoint = so.get("endpoint_url") or ck.get("endpoint_url")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if ck.get("region_name"):
        kwargs["region_name"] = ck["region_name"]
    if so.get("key"):
        kwargs["aws_access_key_id"] = so["key"]
    if so.get("secret"):
        kwargs["aws_secret_access_key"] = so["secret"]
    if so.get("token"):
        kwargs["aws_session_token"] = so["token"]
    if so.get("profile"):
        return boto3.Session(profile_name=so["profile"]).client("s3", **kwargs)
    return boto3.client("s3", **kwargs)


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) if hasattr(e, "response") else ""


def ensure_cors(client, bucket: str) -> None:
    """Add the viewer's CORS rule to the bucket, keeping any other rules it has."""
    try:
        rules = client.get_bucket_cors(Bucket=bucket).get("CORSRules", [])
    except Exception as e:  # NoSuchCORSConfiguration
        if _error_code(e) not in ("NoSuchCORSConfiguration", ""):
            raise
        rules = []
    keep = [r for r in rules if r.get("ID") != CORS_RULE["ID"]]
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": keep + [CORS_RULE]})


def ensure_read_policy(client, bucket: str, prefix: str) -> None:
    """Grant anonymous s3:GetObject on ``prefix/*`` by bucket policy (for buckets that refuse ACLs)."""
    resource = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
    try:
        policy = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    except Exception as e:
        if _error_code(e) not in ("NoSuchBucketPolicy", ""):
            raise
        policy = {"Version": "2012-10-17", "Statement": []}
    sid = "BluffViewerPublicRead" + ("-" + prefix.replace("/", "-") if prefix else "")
    stmts = [s for s in policy.get("Statement", []) if s.get("Sid") != sid]
    stmts.append({"Sid": sid, "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": resource})
    policy["Statement"] = stmts
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def viewer_url(dest: str, storage_options: dict | None, region: str | None = None) -> str:
    """The browser URL of the published viewer, ``<dest>/index.html`` (path-style for custom endpoints)."""
    so = dict(storage_options or {})
    endpoint = so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")
    if dest.startswith("s3://"):
        bucket_key = dest[len("s3://") :].strip("/")
        bucket, _, prefix = bucket_key.partition("/")
        key = (prefix + "/" if prefix else "") + POINTER
        if endpoint:
            return f"{endpoint.rstrip('/')}/{bucket}/{key}"
        host = (
            f"{bucket}.s3.{region}.amazonaws.com" if region and region != "us-east-1" else f"{bucket}.s3.amazonaws.com"
        )
        return f"https://{host}/{key}"
    return dest.rstrip("/") + "/" + POINTER


def new_publish_id() -> str:
    """A fresh prefix name: sortable by time, unique across concurrent publishers."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def pointer_html(viewer_index: str, run: str) -> str:
    """The viewer's ``index.html`` for ``<dest>/``: its assets and its results root under ``run``
    (``runs/<id>/``), named in a ``<meta name="bluff-root">`` that the viewer reads."""
    html, n = re.subn(r'(src|href)="\./assets/', rf'\1="./{run}viewer/assets/', viewer_index)
    if n == 0 or "<head>" not in html:
        raise PublishError("the built viewer's index.html does not load ./assets/: rebuild it with `make viewer`")
    return html.replace("<head>", f'<head>\n    <meta name="bluff-root" content="./{run}" />', 1)


def check_finished(fs, root: str, results: str) -> None:
    """Refuse a root whose run is not finished: no ``finished`` time in its manifest, or a run lock."""
    try:
        manifest = json.loads(fs.cat_file(posixpath.join(root, "manifest.json")))
    except ValueError as e:
        raise PublishError(f"{redact_url(results)}/manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not manifest.get("finished"):
        raise PublishError(
            f"{redact_url(results)} is not a finished run (manifest.json has no 'finished' time): "
            "publish it when the run ends, or pass --force to publish it as it is"
        )
    if fs.exists(posixpath.join(root, LOCK_PATH)):
        raise PublishError(
            f"{redact_url(results)} is locked by a run ({LOCK_PATH} is present): publish it when the "
            "run ends, or pass --force to publish it as it is"
        )


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:400]


def publish(
    results: str,
    dest: str,
    storage_options: dict | None = None,
    public: bool = True,
    viewer_dir: str | os.PathLike | None = None,
    results_storage_options: dict | None = None,
    quiet: bool = False,
    force: bool = False,
    on_object: Callable[[str], None] | None = None,
) -> PublishReport:
    """Upload the results root and the built viewer under ``<dest>/runs/<id>/``, then switch the
    pointers ``<dest>/current.json`` and ``<dest>/index.html`` (the last write: the commit point),
    then delete the older ``runs/*``.

    ``results`` is any fsspec URL or local folder holding a finished run's ``manifest.json``
    (``force``: publish an unfinished one); ``storage_options`` are for ``dest`` (and for
    ``results`` too unless ``results_storage_options`` is given). On S3 the objects are made public
    (``public=True``) and the bucket gets the viewer's CORS rule. ``on_object(key)`` is called after
    each object is written. Returns a report whose ``viewer_url`` is the page to open.
    """
    so = dict(storage_options or {})
    rso = dict(results_storage_options if results_storage_options is not None else so)
    vdir = Path(viewer_dir) if viewer_dir is not None else VIEWER_DIR
    vfiles = _viewer_files(vdir)
    src_fs, src_root = _open_results(results, rso, force)
    try:
        dst = Store(dest, so)  # the storage timeouts and retries of results roots
    except StorageError as e:
        raise PublishError(str(e).replace("results root", "destination")) from None
    report = PublishReport(viewer_url=viewer_url(dest, so))
    report.run = f"runs/{new_publish_id()}/"
    uploader = _Uploader(dst, dest, so, public, report, on_object)
    sources = _sources(src_fs, src_root, report, quiet)
    try:
        _upload(uploader, sources, vfiles, vdir, report.run, quiet)
    except PublishError:
        raise
    except Exception as e:  # noqa: BLE001 - network, permissions, a vanished source file: the old copy stays live
        raise PublishError(
            f"upload to {redact_url(dest)} failed after {report.objects} objects, so the published "
            f"copy is unchanged: {_one_line(e)}"
        ) from None
    report.removed = _remove_older_runs(dst, report.run, report)
    if uploader.is_s3:
        report.acl = uploader.acl_mode
        if not public:
            report.notes.append(
                "objects are private: a browser can read them only with a bucket policy or a CDN in front"
            )
    if not quiet:
        _print_report(report, dest)
    return report


def _open_results(results: str, storage_options: dict, force: bool) -> tuple[Any, str]:
    """The results root's filesystem and path, refused (one line) unless it holds a finished run."""
    try:
        src_fs, src_root = open_url(results, storage_options if "://" in results else {})
        src_root = src_root.rstrip("/")
        if not src_fs.exists(posixpath.join(src_root, "manifest.json")):
            raise PublishError(f"{redact_url(results)} is not a results root (no manifest.json)")
        if not force:
            check_finished(src_fs, src_root, results)
    except PublishError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the storage raises, one line
        raise PublishError(f"cannot read results {redact_url(results)}: {_one_line(e)}") from None
    return src_fs, src_root


class _Uploader:
    """Writes one object of the destination: whole-object writes locally; on S3 with the content
    type, cache policy and public-read ACL, falling back to a bucket policy where ACLs are refused."""

    def __init__(
        self,
        dst: Store,
        dest: str,
        storage_options: dict,
        public: bool,
        report: PublishReport,
        on_object: Callable[[str], None] | None,
    ) -> None:
        self.dst, self.report, self.on_object = dst, report, on_object
        self.is_s3 = dest.startswith(("s3://", "s3a://"))
        self.client: Any = None
        self.bucket = self.prefix = ""
        self.acl_mode = "none"
        if self.is_s3:
            self.bucket, _, self.prefix = dst.root.partition("/")
            self.client = _boto_client(storage_options)
            try:
                self.client.head_bucket(Bucket=self.bucket)
                ensure_cors(self.client, self.bucket)  # before the switch: the new viewer must be readable once live
            except Exception as e:  # noqa: BLE001 - whatever the storage raises, one line
                raise PublishError(
                    f"bucket {self.bucket!r} is not reachable at {redact_url(dest)}: {_one_line(e)}"
                ) from None
            report.cors = True
            self.acl_mode = "public-read" if public else "none"

    def put(self, rel: str, data: bytes) -> None:
        if not self.is_s3:
            self.dst.write_bytes(rel, data)  # a temporary file renamed into place
        else:
            self._put_s3(self.dst.path(rel), rel, data)
        self.report.objects += 1
        self.report.bytes += len(data)
        if self.on_object is not None:
            self.on_object(rel)

    def _put_s3(self, path: str, rel: str, data: bytes) -> None:
        extra = {"ContentType": content_type(rel), "CacheControl": cache_control(rel)}
        if self.acl_mode == "public-read":
            extra["ACL"] = "public-read"
        try:
            self.dst.fs.pipe_file(path, data, chunksize=_SINGLE_PUT, **extra)
        except Exception as e:  # buckets with ObjectOwnership=BucketOwnerEnforced refuse ACLs
            if self.acl_mode != "public-read" or "AccessControlListNotSupported" not in repr(e):
                raise
            self.acl_mode = "bucket-policy"
            ensure_read_policy(self.client, self.bucket, self.prefix)
            extra.pop("ACL")
            self.dst.fs.pipe_file(path, data, chunksize=_SINGLE_PUT, **extra)


def _sources(src_fs: Any, src_root: str, report: PublishReport, quiet: bool) -> list[tuple[str, Callable[[], bytes]]]:
    """``(relative path, reader)`` of every file to publish; what is skipped goes into the report."""
    sources: list[tuple[str, Callable[[], bytes]]]
    if isinstance(src_fs, LocalFileSystem):  # symbolic links are checked here (_walk_local)
        local, report.skipped = _walk_local(src_root)
        sources = [(rel, functools.partial(Path(real).read_bytes)) for rel, real in local]
    else:
        rels, report.skipped = _walk(src_fs, src_root)
        sources = [(rel, functools.partial(src_fs.cat_file, posixpath.join(src_root, rel))) for rel in rels]
    if not quiet:
        for sk in report.skipped:
            if _kind(sk.reason) in ("outside", "broken"):
                print(f"warning: not publishing {sk.rel}: {sk.reason}", file=sys.stderr)
    return sources


def _upload(
    uploader: _Uploader,
    sources: list[tuple[str, Callable[[], bytes]]],
    vfiles: list[tuple[str, Path]],
    vdir: Path,
    run: str,
    quiet: bool,
) -> None:
    """Data, then the viewer, under ``run``; then the pointers, ``index.html`` last (the commit point)."""
    put = uploader.put
    for i, (rel, read) in enumerate(sources):
        put(run + rel, read())
        if not quiet and (i + 1) % 200 == 0:
            print(f"  {i + 1}/{len(sources)} result files uploaded", file=sys.stderr)
    for rel, path in vfiles:
        put(f"{run}viewer/{rel}", path.read_bytes())
    put(f"{run}viewer/config.json", json.dumps({"root": "../"}).encode())
    put(LEGACY_VIEWER, REDIRECT_HTML.encode())
    current = {
        "run": run,
        "viewer": run + "viewer/index.html",
        "manifest": run + "manifest.json",
        "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    put(CURRENT, (json.dumps(current, indent=2) + "\n").encode())
    put(POINTER, pointer_html((vdir / "index.html").read_text(), run).encode())  # the commit point


def _print_report(report: PublishReport, dest: str) -> None:
    print(f"published {report.objects} objects ({report.bytes / 1e6:.1f} MB) to {redact_url(dest)}/{report.run}")
    if report.removed:
        print(f"removed {report.removed} objects of older publishes")
    if report.skipped:
        print(f"skipped {len(report.skipped)} entries of the results root: {report.skipped_summary()}")
    print(f"viewer: {report.viewer_url}")
    for n in report.notes:
        print(f"note: {n}")


def _remove_older_runs(dst: Store, run: str, report: PublishReport) -> int:
    """Delete every ``runs/*`` but ``run``: older publishes, and what interrupted ones left behind
    (no pointer names them). A failure here is a note: those objects are unreachable anyway."""
    removed = 0
    try:
        dst.fs.invalidate_cache(dst.path(RUNS))
        if not dst.fs.exists(dst.path(RUNS)):
            return 0
        for path in dst.fs.ls(dst.path(RUNS), detail=False):
            if posixpath.basename(path.rstrip("/")) != run.split("/")[1]:
                removed += len(dst.fs.find(path))
                dst.fs.rm(path, recursive=True)
    except Exception as e:  # noqa: BLE001 - a note, not a failure: nothing points at those objects
        report.notes.append(
            f"older publishes under {RUNS}/ were not all removed (they are unreachable): {_one_line(e)}"
        )
    return removed


def _run(args: argparse.Namespace) -> int:
    from bluff_ray.run.config import (  # the one KEY=VALUE parser (as in bluff run)
        ConfigError,
        parse_options,
    )

    try:
        publish(
            args.results,
            args.dest,
            storage_options=parse_options(args.storage_option),
            public=not args.private,
            force=args.force,
        )
    except (PublishError, ConfigError) as e:
        print(f"bluff publish: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "bluff publish: interrupted; readers keep the previous copy unless the switch (index.html, the last "
            "write) was made; publish again to finish",
            file=sys.stderr,
        )
        return 130
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``bluff publish`` to the CLI's subparsers; the parser's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "publish",
        help="upload results and the viewer to S3 for browsing in any web browser",
        description=(
            "Copy a finished results root and the built viewer to a fresh prefix DEST/runs/<id>/ (DEST e.g. "
            "s3://bucket/prefix), then switch DEST/index.html (the viewer) and DEST/current.json to it and delete "
            "older copies: an interrupted publish leaves the previous copy live. One PUT "
            "per object with its content type and no content encoding; make the objects publicly readable "
            "(public-read ACL, or a bucket policy where the bucket refuses ACLs) and add a CORS rule "
            "(GET/HEAD from any origin, any request header, exposing Content-Range, Content-Length, ETag) so "
            "the viewer can read byte ranges of the Parquet files. Prints the viewer URL."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", help="results root to publish (local folder or fsspec URL)")
    p.add_argument("dest", metavar="DEST", help="destination URL, e.g. s3://my-bucket/bluff/run1")
    p.add_argument(
        "--storage-option",
        "-S",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec/s3fs option for DEST (repeatable), e.g. endpoint_url=http://127.0.0.1:9000; "
        "credentials come from the standard AWS settings",
    )
    p.add_argument("--private", action="store_true", help="do not make the objects public (set up access yourself)")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish a root whose run is not finished (no 'finished' time in manifest.json, or locked)",
    )
    p.set_defaults(func=_run)
    return p
