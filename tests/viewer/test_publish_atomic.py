"""`bluff publish` under faults, on the moto S3 server: a publish killed at any object leaves the old
copy live and whole, a network failure is one line (exit 2) and changes nothing, a new publish
leaves no object of an older one, and an unfinished root is refused unless forced."""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from pathlib import Path

import boto3
import pytest

import bluff_ray.web.publish as publish_mod
from bluff_ray.web.publish import PublishError, publish
from bluff_ray.web.serve import VIEWER_DIR
from viewer_synth import make_results

pytestmark = [pytest.mark.s3]


class Killed(BaseException):
    """The publishing process dies here: nothing after this object is written, nothing is cleaned up."""


def kill_after(n: int):
    seen = []

    def on_object(key: str) -> None:
        seen.append(key)
        if len(seen) == n:
            raise Killed(key)

    return on_object


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k[len(prefix) :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def copy_named_by(client, bucket: str, dest: str, pointer: str) -> dict[str, bytes]:
    """Every object of the copy that ``index.html`` (its <meta name="bluff-root"> and the assets it
    loads) or ``current.json`` names: what a reader of that pointer gets."""
    body = client.get_object(Bucket=bucket, Key=f"{dest}/{pointer}")["Body"].read().decode()
    if pointer == "index.html":
        run = re.search(r'<meta name="bluff-root" content="\./([^"]+)"', body).group(1)
        for asset in re.findall(r'(?:src|href)="\./([^"]+)"', body):
            client.head_object(Bucket=bucket, Key=f"{dest}/{asset}")  # the page's script and style are there
    else:
        run = json.loads(body)["run"]
    return objects(client, bucket, f"{dest}/{run}")


def whole_copy_of(root: Path) -> dict[str, bytes]:
    viewer = {f"viewer/{k}": v for k, v in files(VIEWER_DIR).items()}
    return {**files(root), **viewer, "viewer/config.json": b'{"root": "../"}'}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("publish-atomic")
    a = make_results(base / "a", seed=1, classes=2, assets=False)
    for i in range(4):  # a few neuron pictures (the synthetic assets are ~400 files: slow to upload)
        (a / "neurons" / "feature_vis" / "mixed3a").mkdir(parents=True, exist_ok=True)
        (a / "neurons" / "feature_vis" / "mixed3a" / f"{i}.png").write_bytes(b"\x89PNG old run %d" % i)
    return a, make_results(base / "b", seed=2, classes=3, assets=False)  # another run, without pictures


@pytest.fixture
def client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def test_killed_publish_leaves_the_old_copy_whole(roots, client, make_bucket, s3_options):
    a, b = roots
    bucket = make_bucket("bluff-killed")
    dest = f"s3://{bucket}/site"
    publish(str(a), dest, storage_options=s3_options, quiet=True)
    n_b = publish(str(b), f"s3://{bucket}/count", storage_options=s3_options, quiet=True).objects  # objects per publish
    old, new = whole_copy_of(a), whole_copy_of(b)
    assert old != new
    for n in (1, 7, n_b // 2, n_b - 2, n_b - 1, n_b):  # ..., before current.json, before index.html, after it
        with pytest.raises(Killed):
            publish(str(b), dest, storage_options=s3_options, quiet=True, on_object=kill_after(n))
        shown = copy_named_by(client, bucket, "site", "index.html")
        listed = copy_named_by(client, bucket, "site", "current.json")
        assert shown == (new if n >= n_b else old), n  # whole, and the old one until the very last write
        assert listed == (new if n >= n_b - 1 else old), n
        publish(str(a), dest, storage_options=s3_options, quiet=True)  # back to a for the next round


def test_new_publish_leaves_no_object_of_an_older_one(roots, client, make_bucket, s3_options):
    a, b = roots
    bucket = make_bucket("bluff-stale")
    dest = f"s3://{bucket}/site"
    publish(str(a), dest, storage_options=s3_options, quiet=True)
    with pytest.raises(Killed):  # an interrupted publish leaves a partial prefix behind...
        publish(str(b), dest, storage_options=s3_options, quiet=True, on_object=kill_after(5))
    assert any(k.startswith("neurons/") for k in files(a))
    report = publish(str(b), dest, storage_options=s3_options, quiet=True)
    everything = objects(client, bucket, "site/")
    pointers = {"index.html", "current.json", "viewer/index.html"}
    assert set(everything) == pointers | {report.run + k for k in whole_copy_of(b)}  # ...removed with the old copy
    assert not any("/neurons/" in k for k in everything)  # no neuron pictures of the older run
    assert report.removed == len(whole_copy_of(a)) + 5


def test_unfinished_or_corrupt_root_refused(tmp_path, make_bucket, s3_options, capsys):
    from bluff_ray.cli import main

    root = make_results(tmp_path / "r", classes=2, assets=False)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["finished"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    bucket = make_bucket("bluff-unfinished")
    with pytest.raises(PublishError, match="not a finished run.*--force"):
        publish(str(root), f"s3://{bucket}/x", storage_options=s3_options, quiet=True)
    assert publish(str(root), f"s3://{bucket}/x", storage_options=s3_options, quiet=True, force=True).objects > 0
    (root / "manifest.json").write_text('{"schema_version": 3, "finis')
    endpoint = s3_options["endpoint_url"]
    assert main(["publish", str(root), f"s3://{bucket}/y", "-S", f"endpoint_url={endpoint}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "manifest.json is not valid JSON" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_failure_mid_publish_is_one_line_and_changes_nothing(
    roots, client, make_bucket, s3_options, monkeypatch, capsys
):
    """The endpoint goes away after some objects (a second moto server on the same buckets, stopped)."""
    from moto.server import ThreadedMotoServer

    from bluff_ray.cli import main

    a, b = roots
    bucket = make_bucket("bluff-network")
    publish(str(a), f"s3://{bucket}/site", storage_options=s3_options, quiet=True)
    old = copy_named_by(client, bucket, "site", "index.html")
    no_retry = {"config_kwargs": {"retries": {"max_attempts": 1}}}  # fail fast (the default retries 5 times)
    for attempt in range(2):  # the API, then the CLI
        flaky = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        flaky.start()
        host, port = flaky.get_host_and_port()
        stop = functools.partial(
            lambda n, server, key: server.stop() if n() == 10 else None, iter(range(1, 10**6)).__next__, flaky
        )
        t0 = time.monotonic()
        if attempt == 0:
            with pytest.raises(PublishError) as e:
                publish(
                    str(b),
                    f"s3://{bucket}/site",
                    quiet=True,
                    on_object=stop,
                    storage_options={"endpoint_url": f"http://{host}:{port}", **no_retry},
                )
            message = str(e.value)
        else:

            def failing(*args, storage_options, on_object=stop, **kwargs):
                return publish(*args, storage_options={**storage_options, **no_retry}, on_object=on_object, **kwargs)

            monkeypatch.setattr(publish_mod, "publish", failing)
            assert main(["publish", str(b), f"s3://{bucket}/site", "-S", f"endpoint_url=http://{host}:{port}"]) == 2
            message = capsys.readouterr().err
            assert message.startswith("bluff publish: ")
        elapsed = time.monotonic() - t0
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert "failed after 10 objects" in message and "unchanged" in message, message
        assert copy_named_by(client, bucket, "site", "index.html") == old  # still the old copy, whole
        assert elapsed < 30, elapsed
