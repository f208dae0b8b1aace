"""The Ray pipeline end to end on local Ray: results, resume, actor death, S3, preflight, config
mismatch, ImageFolder input, credentials. Real components throughout (Ray, moto S3, pyarrow,
fastparquet, DuckDB, pandas)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from bluff_ray import pipeline
from bluff_ray.config import RunConfig
from bluff_ray.pathways import EDGES_SCHEMA, NODES_SCHEMA, PAIRS_SCHEMA
from bluff_ray.pipeline import RunError, Unit, plan_units, run, unit_seed
from bluff_ray.store import Store, StorageError

from conftest import DEMO_CLASSES, demo_config

pytestmark = pytest.mark.ray

FAKE_KEY, FAKE_SECRET = "AKIABLUFFTESTKEY0001", "bluff-test-secret-do-not-write-me"


def small_config(out: str, **kw) -> RunConfig:
    """Cheap but complete: 3 classes, 6 pairs in 6 units (target_chunk=1), 8 images, 3 PGD steps."""
    base = RunConfig()
    values = dict(out=out, classes=[0, 1, 2], images_per_class=8, target_chunk=1, progress=False,
                  attack=dataclasses.replace(base.attack, steps=3),
                  assets=dataclasses.replace(base.assets, enabled=False))
    values.update(kw)
    return RunConfig(**values)


def read_all(store: Store) -> dict[str, bytes]:
    """Every Parquet object under a root (manifest aside), by relative path."""
    store.refresh()
    return {rel: store.read_bytes(rel) for rel in store.list() if rel.endswith(".parquet")}


def assert_same_results(a: Store, b: Store) -> None:
    """Byte-identical Parquet objects (the writer is deterministic, so equal data = equal bytes)."""
    ta, tb = read_all(a), read_all(b)
    assert sorted(ta) == sorted(tb)
    for rel in ta:
        assert ta[rel] == tb[rel], f"{rel} differs"


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """A fault-free run of ``small_config``: what every other run must reproduce."""
    out = str(tmp_path_factory.mktemp("reference"))
    summary = run(small_config(out))
    assert summary.pairs_written == 6 and not summary.failed
    return Store(out)


# --- the demo_results root (shared with the viewer and notebook tests) ----------------------


def test_plan_units_and_seeds_are_deterministic():
    units = plan_units([(2, 0), (0, 2), (0, 1), (2, 1), (0, 3)], 2)
    assert units == [Unit(0, 0, (1, 2)), Unit(0, 1, (3,)), Unit(2, 0, (0, 1))]
    assert unit_seed(0, 1, 0) == unit_seed(0, 1, 0)
    assert len({unit_seed(0, o, c) for o in range(10) for c in range(3)}) == 30


def test_demo_results_every_pair_once_with_format_schema(demo_results):
    s = Store(demo_results)
    index = s.read_table("pair_index.parquet")
    pairs = sorted(zip(index.column("original").to_pylist(), index.column("target").to_pylist()))
    assert pairs == [(o, t) for o in DEMO_CLASSES for t in DEMO_CLASSES if o != t]
    assert index.schema.names == ["original", *PAIRS_SCHEMA.names, "part"]
    for o in DEMO_CLASSES:
        part = f"original={o}/part-0.parquet"
        assert s.read_table(f"pairs/{part}").schema.names == [*PAIRS_SCHEMA.names, "part"]
        for kind, schema in (("nodes", NODES_SCHEMA), ("edges", EDGES_SCHEMA)):
            f = s.read_parquet_file(f"{kind}/{part}")
            assert f.schema_arrow.remove_metadata().equals(schema), kind
            targets = [t for t in DEMO_CLASSES if t != o]
            assert f.metadata.num_row_groups == len(targets)
            for rg, t in enumerate(targets):  # row group i holds exactly target i's rows
                got = set(f.read_row_group(rg, columns=["target"]).column("target").to_pylist())
                assert got <= {t}
                assert f.metadata.row_group(rg).column(0).compression == "SNAPPY"
        rows = s.read_table(f"pairs/{part}")
        assert rows.column("row_group").to_pylist() == list(range(len(DEMO_CLASSES) - 1))
    classes = s.read_table("classes.parquet")
    assert classes.column("class_id").to_pylist() == list(range(10))
    assert classes.column("n_images").to_pylist()[:3] == [24, 24, 24]
    manifest = s.read_json("manifest.json")
    for key in ("schema_version", "model", "layers", "attack", "strengths", "input_space", "k", "images_per_class",
                "config_hash", "classes", "pairs_total", "versions", "created", "finished"):
        assert key in manifest, key
    assert manifest["pairs_total"] == 6 and len(manifest["strengths"]) == 10
    for c in DEMO_CLASSES:
        imp = s.read_table(f"importance/class={c}/part-0.parquet")
        assert imp.num_rows == sum(l["channels"] for l in manifest["layers"])
        assert s.exists(f"examples/class={c}/part-0.parquet")
    assets = s.read_table("neurons/index.parquet")
    shown = set()
    for o in DEMO_CLASSES:
        n = s.read_table(f"nodes/original={o}/part-0.parquet", columns=["layer", "channel"])
        shown |= set(zip(n.column("layer").to_pylist(), n.column("channel").to_pylist()))
    fv = assets.filter(pa.compute.equal(assets.column("kind"), "feature_vis"))
    assert set(zip(fv.column("layer").to_pylist(), fv.column("channel").to_pylist())) == shown
    for rel in assets.column("path").to_pylist()[:20]:
        assert s.read_bytes(rel)[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_results_equal_a_direct_summarize_pair(demo_results):
    """The pipeline's numbers for (0 -> 1) equal attack_grid + summarize_pair called directly."""
    from bluff_ray.attack import attack_grid
    from bluff_ray.data import DigitsSource
    from bluff_ray.models import load_model
    from bluff_ray.pathways import summarize_pair

    cfg = demo_config(demo_results)
    adapter = load_model("digits")
    resolved = pipeline.resolve_run(cfg, adapter)
    unit = plan_units(resolved.pairs, resolved.target_chunk)[0]
    assert unit.original == 0 and unit.targets == (1, 2)
    src = DigitsSource()
    orig, _ = src.class_images(0, cfg.images_per_class)
    tgt, _ = src.class_images(1, cfg.images_per_class)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the CPU actors
    try:
        grid = attack_grid(adapter.attack_model(), orig, list(unit.targets), resolved.attack, batch_size=cfg.attack_batch_size,
                           generator=torch.Generator().manual_seed(unit_seed(cfg.seed, 0, 0)))
        attacked = [grid.adv[0, k][grid.success[0, k]] for k in range(len(resolved.strengths))]
        direct = summarize_pair(adapter, 0, 1, orig, tgt, attacked, len(orig), grid.success[0].sum(1).tolist(),
                                resolved.strengths, cfg.pathways).to_arrow()
    finally:
        torch.set_num_threads(threads)
    s = Store(demo_results)
    for kind in ("nodes", "edges"):
        stored = s.read_parquet_file(f"{kind}/original=0/part-0.parquet").read_row_group(0)
        want = direct[kind]
        assert stored.num_rows == want.num_rows > 0
        for name in want.schema.names:
            a, b = stored.column(name).to_pylist(), want.column(name).to_pylist()
            if isinstance(a[0], str) or name in ("target", "channel", "src_channel", "dst_channel"):
                assert a == b, name
            else:
                np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-5, atol=1e-6)
    row = s.read_table("pairs/original=0/part-0.parquet").slice(0, 1).to_pylist()[0]
    want = direct["pairs"].to_pylist()[0]
    assert row["n_success"] == want["n_success"] and row["n_nodes"] == want["n_nodes"]


def test_results_readable_by_pandas_and_duckdb_with_partition_filters(demo_results):
    import duckdb
    import pandas as pd

    nodes = pads.dataset(os.path.join(demo_results, "nodes"), partitioning="hive").to_table()
    want = nodes.filter(pa.compute.equal(nodes.column("original"), 1)).num_rows
    assert want > 0
    df = pd.read_parquet(os.path.join(demo_results, "nodes"), filters=[("original", "=", 1)])
    assert len(df) == want and set(df["target"]) == {0, 2}
    con = duckdb.connect()
    glob = os.path.join(demo_results, "nodes", "*", "*.parquet")
    n = con.execute(f"select count(*) from read_parquet('{glob}', hive_partitioning=true) where original = 1").fetchone()[0]
    assert n == want
    top = con.execute(
        f"select original, target, max(n_exploited) from read_parquet('{demo_results}/pair_index.parquet') group by all"
    ).fetchall()
    assert len(top) == 6


# --- resume, actor death, S3 ------------------------------------------------------------------


def test_killed_actor_is_survived_with_identical_results(reference, tmp_path):
    killed: list[int] = []

    def kill_first(status: dict) -> None:
        if status["kind"] == "pairs" and not killed:
            killed.append(status["pid"])
            os.kill(status["pid"], signal.SIGKILL)  # the actor process, mid-run (its next unit is queued)

    summary = run(small_config(str(tmp_path)), on_unit_done=kill_first)
    assert killed and not summary.failed and summary.pairs_written == 6
    assert killed[0] in summary.worker_pids
    assert len(summary.worker_pids) > summary.workers  # a restarted actor (new process) did work
    assert_same_results(Store(str(tmp_path)), reference)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates_or_recomputation(reference, tmp_path):
    done: list[dict] = []

    def stop_after_two(status: dict) -> None:
        if status["kind"] == "pairs":
            done.append(status)
            if len(done) == 2:
                raise Interrupted("simulated crash of the driver")

    cfg = small_config(str(tmp_path))
    with pytest.raises(Interrupted):
        run(cfg, on_unit_done=stop_after_two)
    store = Store(str(tmp_path))
    store.refresh()
    markers = store.list("pairs")
    assert 2 <= len(markers) < 6
    assert not store.exists("pair_index.parquet")
    assert "finished" not in store.read_json("manifest.json")
    mtimes = {rel: os.stat(os.path.join(tmp_path, rel)).st_mtime_ns for rel in markers}

    summary = run(cfg)
    assert summary.pairs_skipped == len(markers) and summary.pairs_written == 6 - len(markers)
    for rel, t in mtimes.items():  # finished units were not recomputed
        assert os.stat(os.path.join(tmp_path, rel)).st_mtime_ns == t
    index = store.read_table("pair_index.parquet")
    pairs = list(zip(index.column("original").to_pylist(), index.column("target").to_pylist()))
    assert sorted(pairs) == sorted(set(pairs)) and len(pairs) == 6
    assert_same_results(store, reference)
    assert "finished" in store.read_json("manifest.json")


@pytest.mark.s3
def test_s3_run_matches_local_and_reads_back_with_pyarrow_and_fastparquet(
    reference, s3_endpoint, make_bucket, caplog, capfd
):
    import fastparquet
    import s3fs

    make_bucket("bluff-results")
    opts = {"endpoint_url": s3_endpoint, "key": FAKE_KEY, "secret": FAKE_SECRET}
    s3fs.S3FileSystem.clear_instance_cache()
    summary = run(small_config("s3://bluff-results/run1", storage_options=opts))
    assert summary.pairs_written == 6 and not summary.failed
    remote = Store("s3://bluff-results/run1", opts)
    assert_same_results(remote, reference)

    fs = s3fs.S3FileSystem(key=FAKE_KEY, secret=FAKE_SECRET, client_kwargs={"endpoint_url": s3_endpoint})
    nodes = pq.read_table("bluff-results/run1/nodes", filesystem=fs, partitioning="hive",
                          filters=[("original", "=", 2)])
    ref_nodes = reference.read_table("nodes/original=2/part-0.parquet")
    assert nodes.num_rows == sum(reference.read_table(f"nodes/original=2/part-{j}.parquet").num_rows for j in (0, 1))
    pf = fastparquet.ParquetFile("bluff-results/run1/edges/original=2/part-0.parquet", fs=fs)
    df = pf.to_pandas()
    ref_edges = reference.read_table("edges/original=2/part-0.parquet").to_pandas()
    assert list(df["src_channel"]) == list(ref_edges["src_channel"])
    np.testing.assert_allclose(df["influence_original"], ref_edges["influence_original"])
    assert ref_nodes.num_rows > 0

    # No credential in any object written, nor in the driver's logs and output.
    for rel in remote.list():
        data = remote.read_bytes(rel)
        assert FAKE_SECRET.encode() not in data and FAKE_KEY.encode() not in data, rel
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert FAKE_SECRET not in text and FAKE_KEY not in text
    manifest = remote.read_json("manifest.json")
    assert "storage_options" not in json.dumps(manifest) and s3_endpoint not in json.dumps(manifest)
    logs_dir = _ray_logs_dir()
    if logs_dir:
        for root, _, files in os.walk(logs_dir):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    assert FAKE_SECRET.encode() not in f.read(), name


def _ray_logs_dir() -> str | None:
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # private API; the object and log scans above still ran
        return None


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.s3
def test_preflight_fails_before_any_ray_work(ray_session, monkeypatch, tmp_path):
    def no_workers(*_a, **_k):
        raise AssertionError("actors were started despite unusable storage")

    monkeypatch.setattr(pipeline, "start_workers", no_workers)
    with pytest.raises(StorageError, match="not writable"):
        run(small_config("s3://bucket-x/root", storage_options={"endpoint_url": "http://127.0.0.1:1"}))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        run(small_config(str(blocker / "root")))


def test_cli_exits_nonzero_on_unwritable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "bluff_ray.cli", "run", "--out", str(blocker / "root"), "--classes", "0,1",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in proc.stderr and "Started a local Ray" not in proc.stderr


def test_config_mismatch_is_refused_unless_overwrite(ray_session, tmp_path):
    cfg = small_config(str(tmp_path), pairs=["0:1"], classes=None, num_workers=1,
                       attack=dataclasses.replace(RunConfig().attack, steps=1))
    assert run(cfg).pairs_written == 1
    with pytest.raises(RunError, match=r"differing: .*seed"):
        run(dataclasses.replace(cfg, seed=5))
    again = run(cfg)  # same config: nothing to do
    assert again.pairs_skipped == 1 and again.pairs_written == 0
    summary = run(dataclasses.replace(cfg, seed=5), overwrite=True)
    assert summary.pairs_written == 1 and summary.pairs_skipped == 0
    assert Store(str(tmp_path)).read_json("manifest.json")["config"]["seed"] == 5


def test_image_folder_run_counts_corrupt_images(ray_session, tmp_path, caplog):
    from PIL import Image

    from bluff_ray.models.digits import digits_split

    x, y = digits_split("test")
    for c in (0, 1):
        folder = tmp_path / "images" / str(c)
        folder.mkdir(parents=True)
        for i, img in enumerate(x[y == c][:5]):
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
    (tmp_path / "images" / "0" / "2-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    cfg = small_config(str(tmp_path / "out"), data=str(tmp_path / "images"), classes=[0, 1], target_chunk=None,
                       num_workers=1)
    caplog.set_level("WARNING")
    summary = run(cfg)
    assert summary.pairs_written == 2 and not summary.failed
    classes = Store(str(tmp_path / "out")).read_table("classes.parquet").to_pylist()
    assert (classes[0]["n_images"], classes[0]["n_skipped"]) == (5, 1)
    assert (classes[1]["n_images"], classes[1]["n_skipped"]) == (5, 0)
    assert "unreadable images skipped per class: {0: 1}" in caplog.text


def test_cli_run_reports_written_skipped_and_failed_units(ray_session, tmp_path, capsys):
    """`bluff run --config` end to end in-process: a class without images fails its units with a
    reason, the others are written; the rerun skips them; exit code 1 while anything failed."""
    from PIL import Image

    from bluff_ray import cli
    from bluff_ray.models.digits import digits_split

    x, y = digits_split("test")
    for c in (0, 1):  # class 2 has no folder: every unit touching it must fail, not crash the run
        folder = tmp_path / "images" / str(c)
        folder.mkdir(parents=True)
        for i, img in enumerate(x[y == c][:4]):
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
    conf = tmp_path / "run.yaml"
    conf.write_text(f"data: {tmp_path / 'images'}\nclasses: [zero, one, two]\ntarget_chunk: 1\n"
                    "attack: {{steps: 1}}\nassets: {{enabled: false}}\n".replace("{{", "{").replace("}}", "}"))
    argv = ["run", "--config", str(conf), "--out", str(tmp_path / "out"), "--images-per-class", "4"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert "pairs written: 2, skipped (already done): 0, failed: 4 unit(s); total requested 6" in out
    assert "FAILED unit original=2 part=0 (targets [0]): ValueError: class 2 has no readable images" in out
    assert "FAILED unit original=0 part=1 (targets [2]): ValueError: target class 2 has no readable images" in out
    assert "pair/s" in err or "s/pair" in err  # the progress bar
    store = Store(str(tmp_path / "out"))
    assert "finished" not in store.read_json("manifest.json")
    assert store.read_table("pair_index.parquet").num_rows == 2
    assert cli.main(argv) == 1
    out, _ = capsys.readouterr()
    assert "pairs written: 0, skipped (already done): 2, failed: 4 unit(s)" in out


def test_cli_demo_runs_the_demo_configuration_end_to_end(ray_session, tmp_path, capsys):
    """`bluff demo --no-serve` (the README's first command), cut to 2 digits and 4 images: the demo
    configuration itself (50-step PGD-L2, assets on) runs through the CLI and finishes the root,
    with progress bars for the pairs and the assets; a rerun computes nothing."""
    from bluff_ray import cli

    out = tmp_path / "demo"
    argv = ["demo", "--no-serve", "--out", str(out), "--classes", "0,1", "--images-per-class", "4"]
    assert cli.main(argv) == 0
    stdout, err = capsys.readouterr()
    assert "pairs written: 2, skipped (already done): 0, failed: 0 unit(s); total requested 2" in stdout
    assert "pairs:" in err and "assets:" in err and "neuron" in err
    store = Store(str(out))
    manifest = store.read_json("manifest.json")
    assert manifest["finished"] and manifest["pairs_done"] == 2
    assert manifest["attack"]["steps"] == 50 and manifest["attack"]["method"] == "pgd_l2"
    assert manifest["images_per_class"] == 4
    pairs = store.read_table("pair_index.parquet").to_pandas()
    assert sorted(zip(pairs["original"], pairs["target"])) == [(0, 1), (1, 0)]
    assert (pairs["n_images"] == 4).all()
    assets = store.read_table("neurons/index.parquet")
    assert assets.num_rows > 0
    assert cli.main(argv) == 0
    stdout, _ = capsys.readouterr()
    assert "pairs written: 0, skipped (already done): 2" in stdout
