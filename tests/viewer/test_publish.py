"""`bluff publish` to the moto S3 server, then the viewer reads one pair from it in Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import requests

from bluff_ray.results import layout
from bluff_ray.web.publish import CORS_RULE, PublishError, publish
from viewer_helpers import expected_highlight, shot, wait_ready
from viewer_synth import make_results, read_pair

pytestmark = [pytest.mark.s3, pytest.mark.browser]


TAIL = 16 * 1024  # the viewer's footer read (viewer/src/data.ts)


def row_group_span(path: Path, rg: int) -> int:
    """Bytes from the first to the last byte of a row group's column chunks."""
    cols = [
        pq.ParquetFile(path).metadata.row_group(rg).column(i) for i in range(pq.ParquetFile(path).metadata.num_columns)
    ]
    start = min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in cols)
    end = max(
        (c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset) + c.total_compressed_size
        for c in cols
    )
    return end - start


@pytest.fixture(scope="module")
def big_results(tmp_path_factory) -> Path:
    """12 classes: 11 row groups per partition file, so one pair is a small part of each file."""
    return make_results(tmp_path_factory.mktemp("viewer-big") / "root", seed=1, classes=12, assets=False)


def test_publish_then_view_with_range_requests(page, big_results, s3_endpoint, make_bucket, s3_options):
    bucket = make_bucket("bluff-pub")  # private, no CORS: publish must set both
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    report = publish(str(big_results), f"s3://{bucket}/run1", storage_options=s3_options, quiet=True)
    run = f"run1/{report.run}"  # run1/runs/<id>/

    # every results file and the viewer arrived under the new prefix, with content types and no content
    # encoding; the pointers name it
    local = sorted(p.relative_to(big_results).as_posix() for p in big_results.rglob("*") if p.is_file())
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="run1/")["Contents"]}
    assert {f"{run}{r}" for r in local} <= keys
    assert f"{run}viewer/index.html" in keys and f"{run}viewer/config.json" in keys
    assert {"run1/index.html", "run1/current.json", "run1/viewer/index.html"} <= keys
    assert report.objects == len(keys)
    current = json.loads(client.get_object(Bucket=bucket, Key="run1/current.json")["Body"].read())
    assert current["run"] == report.run and current["manifest"] == report.run + "manifest.json"
    head = client.head_object(Bucket=bucket, Key=f"{run}{layout.part_path('nodes', 3, 0)}")
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert "ContentEncoding" not in head
    assert client.head_object(Bucket=bucket, Key="run1/index.html")["ContentType"].startswith("text/html")
    assert client.head_object(Bucket=bucket, Key="run1/index.html")["CacheControl"] == "no-cache"
    rules = client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    rule = next(r for r in rules if r.get("ID") == CORS_RULE["ID"])
    assert set(rule["AllowedMethods"]) == {"GET", "HEAD"}
    assert set(rule["ExposeHeaders"]) >= {"Content-Range", "Content-Length", "ETag"}
    # anonymous (unsigned) reads work, byte ranges included
    anon = requests.get(f"{s3_endpoint}/{bucket}/{run}manifest.json", timeout=10)
    assert anon.status_code == 200 and json.loads(anon.content) == json.loads(
        (big_results / "manifest.json").read_text()
    )
    rng = requests.get(f"{s3_endpoint}/{bucket}/{run}{layout.CLASSES_PATH}", headers={"Range": "bytes=0-3"}, timeout=10)
    assert rng.status_code == 206 and rng.content == b"PAR1"
    # publishing again is idempotent for the CORS configuration (one rule of ours), and replaces the copy
    report = publish(str(big_results), f"s3://{bucket}/run1", storage_options=s3_options, quiet=True)
    assert sum(r.get("ID") == CORS_RULE["ID"] for r in client.get_bucket_cors(Bucket=bucket)["CORSRules"]) == 1
    assert f"run1/{report.run}" != run and report.removed == len(keys) - 3  # all but the three pointer objects
    run = f"run1/{report.run}"

    # the viewer, served by the S3 endpoint, reads one pair with range requests
    o, t = 5, 9
    responses = []
    page.on("response", lambda r: responses.append(r))
    assert report.viewer_url == f"{s3_endpoint}/{bucket}/run1/index.html"
    # a link made before this layout (<dest>/viewer/index.html?...) lands on the pointer, query kept
    page.goto(f"{s3_endpoint}/{bucket}/run1/viewer/index.html?original={o}&target={t}")
    page.wait_for_url(f"{report.viewer_url}?original={o}&target={t}")
    wait_ready(page, f"{o}-{t}")
    _, nodes, _ = read_pair(big_results, o, t)
    assert page.locator("g.node").count() == len(nodes)
    s = int(page.input_value("#strength"))
    assert page.locator("g.node[data-highlighted='1']").count() == len(expected_highlight(nodes, s, "activated", 20))
    shot(page, "published-s3")

    row = read_pair(big_results, o, t)[0]
    pair_files = {layout.part_path("nodes", o, row["part"]), layout.part_path("edges", o, row["part"])}
    fetched = {}
    for r in responses:
        rel = r.url.split(f"/{run}", 1)[-1]
        if rel in pair_files:
            assert r.status == 206, (rel, r.status)
            assert r.request.headers.get("range", "").startswith("bytes=")
            fetched[rel] = fetched.get(rel, 0) + len(r.body())
    assert set(fetched) == pair_files
    row_group = row["row_group"]
    for rel, n in fetched.items():
        size = (big_results / rel).stat().st_size
        # exactly: one suffix read for the footer (16 KiB; 32 KiB for edges) plus the pair's row group, nothing else
        tail = layout.EDGES_TAIL_BYTES if rel.startswith("edges/") else TAIL
        assert n <= min(tail, size) + row_group_span(big_results / rel, row_group), (rel, n, size)
        assert n < size / 2, (rel, n, size)


def test_publish_refuses_bad_input(tmp_path, s3_options, make_bucket):
    with pytest.raises(PublishError, match="not a results root"):
        publish(str(tmp_path), "s3://whatever/x", storage_options=s3_options, quiet=True)
    root = make_results(tmp_path / "r", classes=2, assets=False)
    with pytest.raises(PublishError, match="not reachable"):
        publish(str(root), "s3://no-such-bucket-here/x", storage_options=s3_options, quiet=True)


def test_publish_cli(tmp_path, s3_endpoint, make_bucket, capsys):
    from bluff_ray.cli import main

    bucket = make_bucket("bluff-cli")
    root = make_results(tmp_path / "r", classes=2, assets=False)
    assert main(["publish", str(root), f"s3://{bucket}/x", "-S", f"endpoint_url={s3_endpoint}"]) == 0
    out = capsys.readouterr().out
    assert f"viewer: {s3_endpoint}/{bucket}/x/index.html" in out
    assert "secret" not in out.lower() and "bluff-test-key-id" not in out
    run = requests.get(f"{s3_endpoint}/{bucket}/x/current.json", timeout=10).json()["run"]
    assert requests.get(f"{s3_endpoint}/{bucket}/x/{run}manifest.json", timeout=10).status_code == 200
    # --private: the same upload, but anonymous reads are refused (so the public check above means something)
    assert main(["publish", str(root), f"s3://{bucket}/p", "-S", f"endpoint_url={s3_endpoint}", "--private"]) == 0
    assert requests.get(f"{s3_endpoint}/{bucket}/p/current.json", timeout=10).status_code == 403
    assert main(["publish", str(tmp_path), f"s3://{bucket}/y", "-S", f"endpoint_url={s3_endpoint}"]) == 2
    assert "not a results root" in capsys.readouterr().err


SECRET = b"TOP SECRET: a file elsewhere on the machine, never public"


def all_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k[len(prefix) :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_publish_skips_links_leaving_the_root_and_hidden_files(tmp_path, s3_endpoint, make_bucket, s3_options, capsys):
    root = make_results(tmp_path / "r", classes=3, assets=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "part-9.parquet").write_bytes(SECRET)
    nodes0 = root / "nodes" / "original=0"
    # what must not be published
    os.symlink(outside / "secret.txt", root / "secret.txt")  # file link leaving the root
    os.symlink(outside / "part-9.parquet", nodes0 / "part-9.parquet")  # ... deeper down
    os.symlink(outside, root / "shared")  # folder link leaving the root
    os.symlink("../../../elsewhere/secret.txt", nodes0 / "rel.parquet")  # relative link leaving it
    os.symlink(tmp_path / "missing", root / "dangling.json")  # broken link
    (root / ".bluff-lock.json").write_text('{"run_id": "x", "host": "build-7"}')  # a run's lock (format v2)
    (nodes0 / ".tmp-part-0.parquet.abc123").write_bytes(b"half a file")  # a partial write
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]")  # a dot-folder
    (root / "edges" / ".DS_Store").write_bytes(b"\0")
    # what must be: links that stay inside the root (under the link's own name)
    os.symlink("manifest.json", root / "manifest-link.json")
    os.symlink(root / "nodes", root / "nodes-alias")
    os.symlink("..", nodes0 / "loop")  # a loop is not followed
    expected = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and not any(q.startswith(".") for q in p.relative_to(root).parts)
        and "nodes-alias" not in p.parts
    )
    bucket = make_bucket("bluff-skip")
    report = publish(str(root), f"s3://{bucket}/run", storage_options=s3_options, force=True)  # (the lock)
    out = capsys.readouterr()

    objects = all_objects(
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1"), bucket, "run/" + report.run
    )
    results = {k: v for k, v in objects.items() if not k.startswith("viewer/")}
    aliases = {k for k in results if k.startswith("nodes-alias/")}
    assert sorted(set(results) - aliases - {"manifest-link.json"}) == expected
    assert all(SECRET not in v for v in objects.values())
    assert results["manifest-link.json"] == (root / "manifest.json").read_bytes()
    assert aliases == {
        f"nodes-alias/{p.relative_to(root / 'nodes').as_posix()}"
        for p in (root / "nodes").rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    }
    for k in results:
        assert not any(part.startswith(".") for part in k.split("/")), k
        assert "loop/" not in k and "shared" not in k and not k.startswith("secret")

    skipped = {s.rel: s.reason for s in report.skipped}
    assert set(skipped) == {
        "secret.txt",
        "nodes/original=0/part-9.parquet",
        "shared",
        "nodes/original=0/rel.parquet",
        "dangling.json",
        ".bluff-lock.json",
        "nodes/original=0/.tmp-part-0.parquet.abc123",
        ".git/",
        "edges/.DS_Store",
        # the same entries again through the nodes-alias/ folder link
        "nodes-alias/original=0/part-9.parquet",
        "nodes-alias/original=0/rel.parquet",
        "nodes-alias/original=0/.tmp-part-0.parquet.abc123",
    }
    assert "outside the results root" in skipped["shared"] and str(outside) in skipped["shared"]
    assert skipped["nodes/original=0/.tmp-part-0.parquet.abc123"] == "temporary file"
    # said: one warning per link, naming the path; the count and the kinds
    for rel in ("secret.txt", "nodes/original=0/part-9.parquet", "shared", "dangling.json"):
        assert f"warning: not publishing {rel}: " in out.err
    assert "skipped 12 entries of the results root: " in out.out
    assert "3 dot-files/folders" in out.out and "2 temporary files" in out.out
    assert "6 symbolic links leaving the root" in out.out and "1 broken symbolic link" in out.out


def test_publish_cli_reports_skipped(tmp_path, s3_endpoint, make_bucket, capsys):
    from bluff_ray.cli import main

    root = make_results(tmp_path / "r", classes=2, assets=False)
    (tmp_path / "key.pem").write_bytes(SECRET)
    os.symlink(tmp_path / "key.pem", root / "key.pem")
    (root / ".bluff-lock.json").write_text("{}")  # a lock: refused unless forced
    bucket = make_bucket("bluff-cli-skip")
    assert main(["publish", str(root), f"s3://{bucket}/x", "-S", f"endpoint_url={s3_endpoint}"]) == 2
    err = capsys.readouterr().err
    assert "is locked by a run" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert main(["publish", str(root), f"s3://{bucket}/x", "-S", f"endpoint_url={s3_endpoint}", "--force"]) == 0
    out = capsys.readouterr()
    assert "warning: not publishing key.pem: symbolic link to" in out.err
    assert "skipped 2 entries of the results root: 1 dot-file/folder, 1 symbolic link leaving the root" in out.out
    run = requests.get(f"{s3_endpoint}/{bucket}/x/current.json", timeout=10).json()["run"]
    assert requests.get(f"{s3_endpoint}/{bucket}/x/{run}key.pem", timeout=10).status_code in (403, 404)
    assert requests.get(f"{s3_endpoint}/{bucket}/x/{run}.bluff-lock.json", timeout=10).status_code in (403, 404)
    assert requests.get(f"{s3_endpoint}/{bucket}/x/{run}manifest.json", timeout=10).status_code == 200


def test_publish_from_s3_skips_hidden_objects(tmp_path, s3_endpoint, make_bucket, s3_options):
    """A results root on S3 (no links there): its lock and partial writes stay behind too."""
    import s3fs

    root = make_results(tmp_path / "r", classes=2, assets=False)
    src = make_bucket("bluff-src")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(root) + "/", f"{src}/root/", recursive=True)
    fs.pipe(f"{src}/root/.bluff-lock.json", b"{}")
    fs.pipe(f"{src}/root/nodes/original=0/.tmp-part-0.parquet.x", b"half")
    dst = make_bucket("bluff-dst")
    with pytest.raises(PublishError, match="is locked by a run"):
        publish(f"s3://{src}/root", f"s3://{dst}/p", storage_options=s3_options, quiet=True)
    report = publish(f"s3://{src}/root", f"s3://{dst}/p", storage_options=s3_options, quiet=True, force=True)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = set(all_objects(client, dst, "p/" + report.run))
    assert ".bluff-lock.json" not in keys and "nodes/original=0/.tmp-part-0.parquet.x" not in keys
    assert "manifest.json" in keys
    assert sorted(s.rel for s in report.skipped) == [".bluff-lock.json", "nodes/original=0/.tmp-part-0.parquet.x"]
