"""`bluff publish` to the moto S3 server, then the viewer reads one pair from it in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import requests

from bluff_ray.publish import CORS_RULE, PublishError, publish
from viewer_helpers import expected_highlight, shot, wait_ready
from viewer_synth import make_results, read_pair

pytestmark = [pytest.mark.s3, pytest.mark.browser]


TAIL = 16 * 1024  # the viewer's footer read (viewer/src/data.ts)


def row_group_span(path: Path, rg: int) -> int:
    """Bytes from the first to the last byte of a row group's column chunks."""
    cols = [pq.ParquetFile(path).metadata.row_group(rg).column(i) for i in range(pq.ParquetFile(path).metadata.num_columns)]
    start = min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in cols)
    end = max((c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset) + c.total_compressed_size
              for c in cols)
    return end - start


@pytest.fixture(scope="module")
def big_results(tmp_path_factory) -> Path:
    """12 classes: 11 row groups per partition file, so one pair is a small part of each file."""
    return make_results(tmp_path_factory.mktemp("viewer-big") / "root", seed=1, classes=12, assets=False)



def test_publish_then_view_with_range_requests(page, big_results, s3_endpoint, make_bucket, s3_options):
    bucket = make_bucket("bluff-pub")  # private, no CORS: publish must set both
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    report = publish(str(big_results), f"s3://{bucket}/run1", storage_options=s3_options, quiet=True)

    # every results file and the viewer arrived, with content types and no content encoding
    local = sorted(p.relative_to(big_results).as_posix() for p in big_results.rglob("*") if p.is_file())
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="run1/")["Contents"]}
    assert {f"run1/{r}" for r in local} <= keys
    assert "run1/viewer/index.html" in keys and "run1/viewer/config.json" in keys
    assert report.objects == len(keys)
    head = client.head_object(Bucket=bucket, Key="run1/nodes/original=3/part-0.parquet")  # one part per original
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert "ContentEncoding" not in head
    assert client.head_object(Bucket=bucket, Key="run1/viewer/index.html")["ContentType"].startswith("text/html")
    rules = client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    rule = next(r for r in rules if r.get("ID") == CORS_RULE["ID"])
    assert set(rule["AllowedMethods"]) == {"GET", "HEAD"}
    assert set(rule["ExposeHeaders"]) >= {"Content-Range", "Content-Length", "ETag"}
    # anonymous (unsigned) reads work, byte ranges included
    anon = requests.get(f"{s3_endpoint}/{bucket}/run1/manifest.json", timeout=10)
    assert anon.status_code == 200 and json.loads(anon.content) == json.loads((big_results / "manifest.json").read_text())
    rng = requests.get(f"{s3_endpoint}/{bucket}/run1/pair_index.parquet", headers={"Range": "bytes=0-3"}, timeout=10)
    assert rng.status_code == 206 and rng.content == b"PAR1"
    # publishing again is idempotent for the CORS configuration (one rule of ours)
    publish(str(big_results), f"s3://{bucket}/run1", storage_options=s3_options, quiet=True)
    assert sum(r.get("ID") == CORS_RULE["ID"] for r in client.get_bucket_cors(Bucket=bucket)["CORSRules"]) == 1

    # the viewer, served by the S3 endpoint, reads one pair with range requests
    o, t = 5, 9
    responses = []
    page.on("response", lambda r: responses.append(r))
    assert report.viewer_url == f"{s3_endpoint}/{bucket}/run1/viewer/index.html"
    page.goto(f"{report.viewer_url}?original={o}&target={t}")
    wait_ready(page, f"{o}-{t}")
    _, nodes, _ = read_pair(big_results, o, t)
    assert page.locator("g.node").count() == len(nodes)
    s = int(page.input_value("#strength"))
    assert page.locator("g.node[data-highlighted='1']").count() == len(expected_highlight(nodes, s, "activated", 20))
    shot(page, "published-s3")

    pair_files = {f"nodes/original={o}/part-0.parquet", f"edges/original={o}/part-0.parquet"}
    fetched = {}
    for r in responses:
        rel = r.url.split("/run1/", 1)[-1]
        if rel in pair_files:
            assert r.status == 206, (rel, r.status)
            assert r.request.headers.get("range", "").startswith("bytes=")
            fetched[rel] = fetched.get(rel, 0) + len(r.body())
    assert set(fetched) == pair_files
    row_group = next(r for r in pq.read_table(big_results / "pair_index.parquet").to_pylist()
                     if r["original"] == o and r["target"] == t)["row_group"]
    for rel, n in fetched.items():
        size = (big_results / rel).stat().st_size
        # exactly: one suffix read for the footer (16 KiB) plus the pair's row group, nothing else
        assert n <= min(TAIL, size) + row_group_span(big_results / rel, row_group), (rel, n, size)
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
    assert f"viewer: {s3_endpoint}/{bucket}/x/viewer/index.html" in out
    assert "secret" not in out.lower() and "bluff-test-key-id" not in out
    assert requests.get(f"{s3_endpoint}/{bucket}/x/manifest.json", timeout=10).status_code == 200
    # --private: the same upload, but anonymous reads are refused (so the public check above means something)
    assert main(["publish", str(root), f"s3://{bucket}/p", "-S", f"endpoint_url={s3_endpoint}", "--private"]) == 0
    assert requests.get(f"{s3_endpoint}/{bucket}/p/manifest.json", timeout=10).status_code == 403
    assert main(["publish", str(tmp_path), f"s3://{bucket}/y", "-S", f"endpoint_url={s3_endpoint}"]) == 2
    assert "not a results root" in capsys.readouterr().err
