"""`bluff publish`: host a results root and the viewer on S3 (or any S3-compatible store).

Layout written under ``dest`` (e.g. ``s3://bucket/prefix``)::

    <dest>/manifest.json, classes.parquet, pair_index/, nodes/, edges/, neurons/, ... (docs/FORMAT.md)
    <dest>/viewer/index.html, assets/..., config.json  ({"root": "../"})

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
import json
import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from bluff_ray.results.store import redact_url
from bluff_ray.web.serve import VIEWER_DIR, content_type

CORS_RULE = {
    "ID": "bluff-viewer",
    "AllowedMethods": ["GET", "HEAD"],
    "AllowedOrigins": ["*"],
    "AllowedHeaders": ["*"],
    "ExposeHeaders": ["Content-Range", "Content-Length", "ETag"],
    "MaxAgeSeconds": 3600,
}
# Objects a rerun or a new publish may replace: browsers must revalidate them. The reduce rewrites
# the global files (docs/FORMAT.md) at the end of every run.
_MUTABLE = {"manifest.json", "classes.parquet", "pair_index.parquet", "neurons/index.parquet", "viewer/index.html",
            "viewer/config.json"}
_MUTABLE_PREFIXES = ("pair_index/", "rankings/", "overview/", "atlas/")
_SINGLE_PUT = 4 * 2**30  # s3fs uses one PutObject below 2 * chunksize


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
    if rel in _MUTABLE or rel.endswith(".json") or rel.startswith(_MUTABLE_PREFIXES):
        return "no-cache"
    if rel.startswith("viewer/assets/"):
        return "public, max-age=31536000, immutable"  # content-hashed file names
    return "public, max-age=300"


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
        raise PublishError(
            f"the viewer is not built ({viewer_dir / 'index.html'} is missing): run `make viewer` first"
        )
    return sorted(
        (p.relative_to(viewer_dir).as_posix(), p) for p in viewer_dir.rglob("*") if p.is_file() and p.name != "config.json"
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
    """The browser URL of the published viewer (path-style for custom endpoints)."""
    so = dict(storage_options or {})
    endpoint = so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")
    if dest.startswith("s3://"):
        bucket_key = dest[len("s3://"):].strip("/")
        bucket, _, prefix = bucket_key.partition("/")
        key = (prefix + "/" if prefix else "") + "viewer/index.html"
        if endpoint:
            return f"{endpoint.rstrip('/')}/{bucket}/{key}"
        host = f"{bucket}.s3.{region}.amazonaws.com" if region and region != "us-east-1" else f"{bucket}.s3.amazonaws.com"
        return f"https://{host}/{key}"
    return dest.rstrip("/") + "/viewer/index.html"


def publish(
    results: str,
    dest: str,
    storage_options: dict | None = None,
    public: bool = True,
    viewer_dir: str | os.PathLike | None = None,
    results_storage_options: dict | None = None,
    quiet: bool = False,
) -> PublishReport:
    """Upload the built viewer to ``<dest>/viewer/`` and the results root's files to ``<dest>/``.

    ``results`` is any fsspec URL or local folder holding ``manifest.json``; ``storage_options`` are
    for ``dest`` (and for ``results`` too unless ``results_storage_options`` is given). On S3 the
    objects are made public (``public=True``) and the bucket gets the viewer's CORS rule. Returns a
    report whose ``viewer_url`` is the page to open.
    """
    so = dict(storage_options or {})
    rso = dict(results_storage_options if results_storage_options is not None else so)
    vfiles = _viewer_files(Path(viewer_dir) if viewer_dir is not None else VIEWER_DIR)
    try:
        src_fs, src_root = fsspec.core.url_to_fs(results, **(rso if "://" in results else {}))
    except Exception as e:
        raise PublishError(f"cannot open results {redact_url(results)}: {e}") from None
    src_root = src_root.rstrip("/")
    if not src_fs.exists(posixpath.join(src_root, "manifest.json")):
        raise PublishError(f"{redact_url(results)} is not a results root (no manifest.json)")
    try:
        dst_fs, dst_root = fsspec.core.url_to_fs(dest, **so)
    except Exception as e:
        raise PublishError(f"cannot open destination {redact_url(dest)}: {e}") from None
    dst_root = dst_root.rstrip("/")
    is_s3 = dest.startswith("s3://") or dest.startswith("s3a://")
    report = PublishReport(viewer_url=viewer_url(dest, so))
    client = bucket = prefix = None
    acl_mode = "none"
    if is_s3:
        bucket, _, prefix = dst_root.partition("/")
        client = _boto_client(so)
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as e:
            raise PublishError(f"bucket {bucket!r} is not reachable at {redact_url(dest)}: {e}") from None
        acl_mode = "public-read" if public else "none"

    def put(rel: str, data: bytes) -> None:
        nonlocal acl_mode
        path = f"{dst_root}/{rel}"
        if not is_s3:
            dst_fs.makedirs(posixpath.dirname(path), exist_ok=True)
            dst_fs.pipe_file(path, data)
        else:
            extra = {"ContentType": content_type(rel), "CacheControl": cache_control(rel)}
            if acl_mode == "public-read":
                extra["ACL"] = "public-read"
            try:
                dst_fs.pipe_file(path, data, chunksize=_SINGLE_PUT, **extra)
            except Exception as e:  # buckets with ObjectOwnership=BucketOwnerEnforced refuse ACLs
                if acl_mode != "public-read" or "AccessControlListNotSupported" not in repr(e):
                    raise
                acl_mode = "bucket-policy"
                ensure_read_policy(client, bucket, prefix)
                extra.pop("ACL")
                dst_fs.pipe_file(path, data, chunksize=_SINGLE_PUT, **extra)
        report.objects += 1
        report.bytes += len(data)

    if isinstance(src_fs, LocalFileSystem):  # symbolic links are checked here (_walk_local)
        local, report.skipped = _walk_local(src_root)
        sources = [(rel, lambda p=real: Path(p).read_bytes()) for rel, real in local]
    else:
        rels, report.skipped = _walk(src_fs, src_root)
        sources = [(rel, lambda p=posixpath.join(src_root, rel): src_fs.cat_file(p)) for rel in rels]
    if not quiet:
        for sk in report.skipped:
            if _kind(sk.reason) in ("outside", "broken"):
                print(f"warning: not publishing {sk.rel}: {sk.reason}", file=sys.stderr)
    for i, (rel, read) in enumerate(sources):
        put(rel, read())
        if not quiet and (i + 1) % 200 == 0:
            print(f"  {i + 1}/{len(sources)} result files uploaded", file=sys.stderr)
    for rel, path in vfiles:
        put(f"viewer/{rel}", path.read_bytes())
    put("viewer/config.json", json.dumps({"root": "../"}).encode())
    if is_s3:
        ensure_cors(client, bucket)
        report.cors = True
        report.acl = acl_mode
        if not public:
            report.notes.append("objects are private: a browser can read them only with a bucket policy or a CDN in front")
    if not quiet:
        print(f"published {report.objects} objects ({report.bytes / 1e6:.1f} MB) to {redact_url(dest)}")
        if report.skipped:
            print(f"skipped {len(report.skipped)} entries of the results root: {report.skipped_summary()}")
        print(f"viewer: {report.viewer_url}")
        for n in report.notes:
            print(f"note: {n}")
    return report


def _parse_options(items: list[str] | None) -> dict:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise PublishError(f"--storage-option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = {"true": True, "false": False}.get(v.strip().lower(), v.strip())
    return out


def _run(args: argparse.Namespace) -> int:
    try:
        publish(args.results, args.dest, storage_options=_parse_options(args.storage_option), public=not args.private)
    except PublishError as e:
        print(f"bluff publish: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``bluff publish`` to the CLI's subparsers; the parser's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "publish",
        help="upload results and the viewer to S3 for browsing in any web browser",
        description=(
            "Copy a results root to DEST (e.g. s3://bucket/prefix) and the built viewer to DEST/viewer/, one PUT "
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
        "--storage-option", "-S", action="append", metavar="KEY=VALUE",
        help="fsspec/s3fs option for DEST (repeatable), e.g. endpoint_url=http://127.0.0.1:9000; "
        "credentials come from the standard AWS settings",
    )
    p.add_argument("--private", action="store_true", help="do not make the objects public (set up access yourself)")
    p.set_defaults(func=_run)
    return p

