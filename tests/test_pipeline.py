"""The Ray pipeline end to end on local Ray: results, resume, actor death, S3, preflight, config
mismatch, concurrent runs, ImageFolder input, credentials, clear errors. Real components
throughout (Ray, moto S3, pyarrow, fastparquet, DuckDB, pandas)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from bluff_ray.results import layout
from bluff_ray.results.store import StorageError, Store
from bluff_ray.run import driver
from bluff_ray.run.config import RunConfig
from bluff_ray.run.driver import RunError, run
from bluff_ray.run.plan import Unit, pair_seed, plan_units, unit_seed
from conftest import DEMO_CLASSES, SUPPORT, demo_config

pytestmark = pytest.mark.ray

FAKE_KEY, FAKE_SECRET = "AKIABLUFFTESTKEY0001", "bluff-test-secret-do-not-write-me"


def small_config(out: str, **kw) -> RunConfig:
    """Cheap but complete: 3 classes, 6 pairs in 6 units (target_chunk=1), 8 images, 3 PGD steps."""
    base = RunConfig()
    values = dict(
        out=out,
        classes=[0, 1, 2],
        images_per_class=8,
        target_chunk=1,
        progress=False,
        attack=dataclasses.replace(base.attack, steps=3),
        assets=dataclasses.replace(base.assets, enabled=False),
    )
    values.update(kw)
    return RunConfig(**values)


def read_all(store: Store) -> dict[str, bytes]:
    """Every per-unit Parquet object under a root, by relative path."""
    store.refresh()
    return {
        rel: store.read_bytes(rel)
        for rel in store.list()
        if rel.endswith(".parquet") and rel.split("/")[0] in ("pairs", "nodes", "edges", "causal", "pair_index")
    }


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


def test_plan_units_and_seeds_are_deterministic():
    units = plan_units([(2, 0), (0, 2), (0, 1), (2, 1), (0, 3), (0, 3)], 2)
    # fixed target ranges: unit j holds targets [2j, 2j+2), whatever else is selected
    assert units == [Unit(0, 0, (1,)), Unit(0, 1, (2, 3)), Unit(2, 0, (0, 1))]
    assert plan_units([(0, 3)], 2) == [Unit(0, 1, (3,))]
    assert pair_seed(0, 1, 2) == pair_seed(0, 1, 2) != pair_seed(0, 2, 1)
    assert unit_seed(0, 1, 0) == unit_seed(0, 1, 0)
    assert len({unit_seed(0, o, c) for o in range(10) for c in range(3)}) == 30


# --- the demo_results root (shared with the viewer and notebook tests) ----------------------


def test_demo_results_every_pair_once_with_format_schema(demo_results):
    s = Store(demo_results)
    manifest = s.read_json("manifest.json")
    assert manifest["schema_version"] == layout.SCHEMA_VERSION == 3
    for key in (
        "model",
        "layers",
        "attack",
        "strengths",
        "input_space",
        "k",
        "images_per_class",
        "config_hash",
        "classes",
        "pairs_total",
        "targets_per_file",
        "causal",
        "versions",
        "created",
        "finished",
        "pairs_done",
        "landing",
    ):
        assert key in manifest, key
    assert manifest["pairs_total"] == 6 and manifest["pairs_done"] == 6 and len(manifest["strengths"]) == 10
    pairs = []
    for o in DEMO_CLASSES:
        idx = s.read_table(layout.pair_index_path(o))
        assert idx.schema.remove_metadata().equals(layout.PAIR_INDEX_SCHEMA)
        targets = [t for t in DEMO_CLASSES if t != o]
        assert idx.column("target").to_pylist() == targets
        pairs += [(o, t) for t in targets]
        for kind, schema in (
            ("nodes", layout.NODES_SCHEMA),
            ("edges", layout.edges_schema(10)),
            ("causal", layout.CAUSAL_SCHEMA),
        ):
            data = s.read_bytes(layout.part_path(kind, o, 0))
            assert layout.footer_size(data) <= layout.footer_limit(kind)  # one range request
            f = pq.ParquetFile(pa.BufferReader(data))
            assert f.schema_arrow.remove_metadata().equals(schema), kind
            assert f.metadata.num_row_groups == len(targets)
            for rg, t in enumerate(targets):  # row group i holds exactly target i's rows
                assert set(f.read_row_group(rg, columns=["target"]).column("target").to_pylist()) <= {t}
                assert f.metadata.row_group(rg).column(0).compression == "ZSTD"  # layout.PARTITION_OPTIONS
        assert idx.column("row_group").to_pylist() == list(range(len(targets)))
        causal = s.read_table(layout.part_path("causal", o, 0)).to_pylist()
        keys = [(r["target"], r["strength"], r["layer"], r["set"]) for r in causal]
        assert causal and len(keys) == len(set(keys))  # one row per (pair, strength, layer or all, set)
        layer_names = {l["name"] for l in manifest["layers"]} | {"all"}
        fixed_sets = {"exploited", "exploited_union", "top_original_target", "top_delta"}
        for r in causal:
            assert r["target"] in targets and 0 <= r["strength"] < 10 and r["layer"] in layer_names
            assert r["set"] in fixed_sets or r["set"].startswith("neuron:"), r["set"]
            assert r["n_neurons"] >= 1 and r["recovery"][0] >= 1  # patched neurons, held-out images
        for t, st in {(r["target"], r["strength"]) for r in causal}:  # every patched strength has its headline row
            assert (t, st, "all", "exploited") in keys
    assert sorted(pairs) == [(o, t) for o in DEMO_CLASSES for t in DEMO_CLASSES if o != t]
    classes = s.read_table("classes.parquet")
    assert classes.column("class_id").to_pylist() == list(range(10))
    assert classes.column("n_images").to_pylist()[:3] == [24, 24, 24]
    assert classes.column("n_as_original").to_pylist()[:4] == [2, 2, 2, 0]
    for c in DEMO_CLASSES:
        imp = s.read_table(layout.importance_path(c))
        assert imp.num_rows == sum(l["channels"] for l in manifest["layers"])
        assert s.exists(layout.examples_path(c))
    for key in layout.ranking_keys(10):
        assert pq.read_table(os.path.join(demo_results, layout.ranking_path(key))).num_rows == 6
    assert s.exists(layout.OVERVIEW_PATH) and s.exists(layout.ATLAS_PATH)
    assets = s.read_table("neurons/index.parquet")
    shown = set()
    for o in DEMO_CLASSES:
        n = s.read_table(layout.part_path("nodes", o, 0), columns=["layer", "channel"])
        shown |= set(zip(n.column("layer").to_pylist(), n.column("channel").to_pylist()))
    fv = assets.filter(pa.compute.equal(assets.column("kind"), "feature_vis"))
    assert set(zip(fv.column("layer").to_pylist(), fv.column("channel").to_pylist())) == shown
    for rel in assets.column("path").to_pylist()[:20]:
        assert s.read_bytes(rel)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not s.exists(layout.LOCK_PATH)  # released at the end


def test_demo_results_equal_a_direct_compute_unit(demo_results):
    """The pipeline's numbers for original 0 equal engine.compute_unit called directly."""
    from bluff_ray.engine.compute import class_data, compute_unit
    from bluff_ray.engine.models import load_model
    from bluff_ray.results.rows import unit_tables
    from bluff_ray.run.data import DigitsSource

    cfg = demo_config(demo_results)
    adapter = load_model("digits")
    resolved = driver.resolve_run(cfg, adapter)
    unit = plan_units(resolved.pairs, Store(demo_results).read_json("manifest.json")["targets_per_file"])[0]
    assert unit.original == 0 and unit.targets == (1, 2)
    src = DigitsSource()
    data = {c: class_data(adapter, c, src.class_images(c, cfg.images_per_class)[0], None) for c in (0, 1, 2)}
    for c, d in data.items():  # what the benign stage stored is what benign_stats computes
        stored = Store(demo_results).read_table(layout.importance_path(c)).column("importance").to_numpy()
        want = np.concatenate([d.importance[n].numpy() for n in adapter.layer_names])
        np.testing.assert_allclose(stored, want, rtol=1e-6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the CPU actors
    try:
        direct = unit_tables(
            compute_unit(
                adapter,
                data[0],
                [data[1], data[2]],
                resolved.attack,
                cfg.pathways,
                seed=[pair_seed(cfg.seed, 0, t) for t in (1, 2)],
                batching=cfg.attack_batch_size,
            )
        )
    finally:
        torch.set_num_threads(threads)
    s = Store(demo_results)
    for kind in ("nodes", "edges", "causal"):
        stored = s.read_table(layout.part_path(kind, 0, 0)).to_pylist()
        want = getattr(direct, kind).to_pylist()
        assert len(stored) == len(want) > 0, kind
        for a, b in zip(stored, want):
            for name, va in a.items():
                vb = b[name]
                if isinstance(va, (str, int)) and not isinstance(va, bool):
                    assert va == vb, (kind, name)
                else:
                    np.testing.assert_allclose(
                        np.array(va, dtype=float), np.array(vb, dtype=float), rtol=1e-5, atol=1e-6
                    )
    row = s.read_table(layout.pair_index_path(0)).slice(0, 1).to_pylist()[0]
    want = direct.pairs.to_pylist()[0]
    assert row["n_success"] == want["n_success"] and row["n_nodes"] == want["n_nodes"]


def test_results_readable_by_pandas_duckdb_and_fastparquet_with_partition_filters(demo_results):
    import duckdb
    import fastparquet
    import pandas as pd

    nodes = pads.dataset(os.path.join(demo_results, "nodes"), partitioning="hive").to_table()
    want = nodes.filter(pa.compute.equal(nodes.column("original"), 1)).num_rows
    assert want > 0
    df = pd.read_parquet(os.path.join(demo_results, "nodes"), filters=[("original", "=", 1)])
    assert len(df) == want and set(df["target"]) == {0, 2}
    con = duckdb.connect()
    glob = os.path.join(demo_results, "nodes", "*", "*.parquet")
    n = con.execute(
        f"select count(*) from read_parquet('{glob}', hive_partitioning=true) where original = 1"
    ).fetchone()[0]
    assert n == want
    top = con.execute(
        f"select original, target, n_exploited from read_parquet('{demo_results}/pair_index/*/*.parquet', "
        "hive_partitioning=true) order by n_exploited desc, original, target"
    ).fetchall()
    assert len(top) == 6
    pf = fastparquet.ParquetFile(
        [os.path.join(demo_results, f"edges/original={o}/part-0.parquet") for o in DEMO_CLASSES],
        root=os.path.join(demo_results, "edges"),
    )
    edges = pf.to_pandas(filters=[("original", "==", 2)])
    ref = pq.read_table(os.path.join(demo_results, "edges/original=2/part-0.parquet")).to_pandas()
    assert list(edges["src_channel"]) == list(ref["src_channel"])


def test_atlas_counts_equal_a_duckdb_query_over_the_nodes(demo_results):
    import duckdb

    atlas = pq.read_table(os.path.join(demo_results, layout.ATLAS_PATH)).to_pylist()
    nodes = f"read_parquet('{demo_results}/nodes/*/*.parquet', hive_partitioning=true)"
    con = duckdb.connect()
    s = len(json.loads(Path(demo_results, "manifest.json").read_text())["strengths"])
    per = {
        (l, c): list(row)
        for l, c, *row in con.execute(
            "select layer, channel, count(*), sum(case when role = 'exploited' then 1 else 0 end), "
            + ", ".join(f"sum(case when (exploited_mask >> {i}) & 1 = 1 then 1 else 0 end)" for i in range(s))
            + f" from {nodes} group by layer, channel"
        ).fetchall()
    }
    assert sum(r["n_exploited_any"] for r in atlas) > 0
    for r in atlas:
        want = per.get((r["layer"], r["channel"]), [0, 0] + [0] * s)
        assert [r["n_displayed"], r["n_exploited_any"], *r["n_exploited"]] == want, (r["layer"], r["channel"])
    tops = dict(
        ((l, c), o)
        for l, c, o in con.execute(
            f"select layer, channel, arg_max(original, n) from (select layer, channel, original, count(*) n from {nodes} "
            "where role = 'exploited' group by all) group by layer, channel"
        ).fetchall()
    )
    for r in atlas:
        if r["n_exploited_any"]:
            counts = dict(zip(r["top_originals"], r["top_original_counts"]))
            assert counts[tops[(r["layer"], r["channel"])]] == max(counts.values())


# --- resume, actor death, S3 ------------------------------------------------------------------


def test_killed_actor_is_survived_with_identical_results(reference, tmp_path):
    killed: list[int] = []

    def kill_first(status) -> None:
        if status.kind == "pairs" and not killed:
            killed.append(status.pid)
            os.kill(status.pid, signal.SIGKILL)  # the actor process, mid-run (its next unit is queued)

    summary = run(small_config(str(tmp_path)), on_unit_done=kill_first)
    assert killed and not summary.failed and summary.pairs_written == 6
    assert killed[0] in summary.worker_pids
    assert len(summary.worker_pids) > summary.workers  # a restarted actor (new process) did work
    assert_same_results(Store(str(tmp_path)), reference)


def test_permanently_dead_actor_leaves_the_pool_and_loses_no_unit(reference, tmp_path, monkeypatch):
    """An actor whose restarts are used up (a lost node) leaves the pool; its units finish on the
    other worker; the results equal a fault-free run."""
    monkeypatch.setattr(driver, "MAX_RESTARTS", 0)
    monkeypatch.setattr(driver, "MAX_TASK_RETRIES", 0)
    killed: list[int] = []

    def kill_first(status) -> None:
        if status.kind == "pairs" and not killed:
            killed.append(status.pid)
            os.kill(status.pid, signal.SIGKILL)

    summary = run(small_config(str(tmp_path)), on_unit_done=kill_first)
    assert killed and not summary.failed and summary.pairs_written == 6
    assert len(summary.workers_lost) == 1 and "worker" in summary.workers_lost[0]
    assert "worker lost" in summary.report()
    assert_same_results(Store(str(tmp_path)), reference)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates_or_recomputation(reference, tmp_path):
    done: list = []

    def stop_after_two(status) -> None:
        if status.kind == "pairs":
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
    assert not store.list("pair_index") and not store.exists(layout.LOCK_PATH)
    assert "finished" not in store.read_json("manifest.json")
    mtimes = {rel: os.stat(os.path.join(tmp_path, rel)).st_mtime_ns for rel in markers}

    summary = run(cfg)
    assert summary.pairs_skipped == len(markers) and summary.pairs_written == 6 - len(markers)
    for rel, t in mtimes.items():  # finished units were not recomputed
        assert os.stat(os.path.join(tmp_path, rel)).st_mtime_ns == t
    assert_same_results(store, reference)  # pair_index included: resumed units read back whole
    for key in layout.ranking_keys(10):
        assert store.read_bytes(layout.ranking_path(key)) == reference.read_bytes(layout.ranking_path(key))
    assert store.read_bytes(layout.ATLAS_PATH) == reference.read_bytes(layout.ATLAS_PATH)
    assert "finished" in store.read_json("manifest.json")


def test_resume_reads_finished_units_in_parallel_rounds(reference, tmp_path, monkeypatch):
    """On resume the reduce lists, then reads finished units' markers READ_CONCURRENCY at a time:
    O(units / concurrency) sequential request rounds, not O(units) (counted on an instrumented
    filesystem with 20 ms per read)."""
    import countfs
    from bluff_ray.results.reduce import Aggregate, LayerSpec
    from bluff_ray.results.store import READ_CONCURRENCY

    root = tmp_path / "many"
    src = Path(reference.root)
    marker = (src / "pairs/original=0/part-1.parquet").read_bytes()
    units = [Unit(o, j, (j,)) for o in range(8) for j in range(12)]  # 96 finished units
    for u in units:
        p = root / u.marker
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(marker)
    log = tmp_path / "reads.log"
    monkeypatch.setenv("BLUFF_TEST_FS_LOG", str(log))
    monkeypatch.setenv("BLUFF_TEST_FS_LATENCY", "0.02")
    countfs.peak_concurrency(reset=True)
    store = Store(f"countfs://{root}")
    agg = Aggregate(
        [str(i) for i in range(10)],
        [LayerSpec("mixed3a", 40), LayerSpec("mixed3b", 56), LayerSpec("mixed4a", 64), LayerSpec("mixed4b", 64)],
        10,
    )
    t0 = time.perf_counter()
    driver.read_finished(store, units, agg, verify=None)  # markers only: their unit files are not copied
    wall = time.perf_counter() - t0
    reads = [l for l in log.read_text().splitlines() if " read " in l]
    assert len(reads) == len(units)  # one request per unit, nothing read twice
    peak = countfs.peak_concurrency()
    assert peak >= min(READ_CONCURRENCY, len(units)) // 2, peak
    rounds = -(-len(units) // peak)
    assert rounds <= len(units) // 8
    assert wall < len(units) * 0.02 / 4  # sequential reads would take len(units) x 20 ms
    assert len(agg.units()) == len(units)


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
    assert not remote.exists(layout.LOCK_PATH)

    fs = s3fs.S3FileSystem(key=FAKE_KEY, secret=FAKE_SECRET, client_kwargs={"endpoint_url": s3_endpoint})
    nodes = pq.read_table(
        "bluff-results/run1/nodes", filesystem=fs, partitioning="hive", filters=[("original", "=", 2)]
    )
    assert nodes.num_rows == sum(reference.read_table(f"nodes/original=2/part-{j}.parquet").num_rows for j in (0, 1))
    pf = fastparquet.ParquetFile("bluff-results/run1/edges/original=2/part-0.parquet", fs=fs)
    df = pf.to_pandas()
    ref_edges = reference.read_table("edges/original=2/part-0.parquet").to_pandas()
    assert list(df["src_channel"]) == list(ref_edges["src_channel"])
    np.testing.assert_allclose(df["influence_original"], ref_edges["influence_original"])

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


# --- refusals and clear errors ----------------------------------------------------------------


@pytest.mark.s3
def test_preflight_fails_before_the_model_or_any_ray_work(ray_session, monkeypatch, tmp_path):
    def no_workers(*_a, **_k):
        raise AssertionError("workers were planned despite unusable storage")

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the storage check")

    monkeypatch.setattr(driver, "plan_pool", no_workers)
    monkeypatch.setattr(driver, "load_run_model", no_model)
    with pytest.raises(StorageError, match="not writable"):
        run(small_config("s3://bucket-x/root", storage_options={"endpoint_url": "http://127.0.0.1:1"}))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        run(small_config(str(blocker / "root")))


def test_preflight_gives_up_on_an_endpoint_that_never_answers(monkeypatch):
    """A server that accepts TCP connections and never answers: a clear error within the timeout."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept and never answer
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        port = srv.getsockname()[1]
        store = Store("s3://silent-bucket/root", {"endpoint_url": f"http://127.0.0.1:{port}"})
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="no answer"):
            store.preflight(timeout_s=3)
        assert time.monotonic() - t0 < 10
    finally:
        stop.set()
        srv.close()
        for c in held:
            c.close()


def test_cli_exits_2_with_a_message_for_bad_input(tmp_path):
    """Unwritable root, unknown model, corrupt weights, GoogLeNet on digits, CUDA without a GPU,
    more workers than the machine has: each one line on stderr and exit code 2, no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad_weights = tmp_path / "weights.pth"
    bad_weights.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "out")
    cases = [
        (["--out", str(blocker / "root")], "not writable"),
        (["--out", out, "--model", "resnet"], "unknown model 'resnet'"),
        (["--out", out, "--weights", str(bad_weights)], "not a torch state_dict"),
        (["--out", out, "--model", "googlenet", "--weights", "random"], "only fits the digits model"),
        (["--out", out, "--device", "cuda"], "no GPU"),
        (["--out", out, "--num-workers", "999"], "999 workers were requested"),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if "--device" not in c[0]]
    for args, msg in cases:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "bluff_ray.cli", "run", "--classes", "0,1", "--no-progress", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert msg in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])
        assert time.monotonic() - t0 < 120
        assert not Path(out, "pairs").exists()  # refused before any compute


def test_config_mismatch_is_refused_unless_overwrite(ray_session, tmp_path):
    cfg = small_config(
        str(tmp_path),
        pairs=["0:1"],
        classes=None,
        num_workers=1,
        attack=dataclasses.replace(RunConfig().attack, steps=1),
    )
    assert run(cfg).pairs_written == 1
    with pytest.raises(RunError, match=r"differing: .*seed"):
        run(dataclasses.replace(cfg, seed=5))
    again = run(cfg)  # same config: nothing to do
    assert again.pairs_skipped == 1 and again.pairs_written == 0
    summary = run(dataclasses.replace(cfg, seed=5), overwrite=True)
    assert summary.pairs_written == 1 and summary.pairs_skipped == 0
    assert Store(str(tmp_path)).read_json("manifest.json")["config"]["seed"] == 5


def test_a_version_1_root_is_refused_with_a_clear_message(ray_session, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "config_hash": "x"}))
    with pytest.raises(RunError, match="schema version 1.*--overwrite"):
        run(small_config(str(tmp_path)))


def test_concurrent_runs_into_one_root_are_refused(ray_session, tmp_path):
    """While one run holds a root, a second one is refused at once: another configuration by the
    manifest check naming the differing fields (before the lock), the same one by the lock;
    afterwards the other configuration is still refused, the same one resumes."""
    cfg = small_config(str(tmp_path), pairs=["0:1", "1:0"], classes=None, num_workers=1)
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold(status) -> None:
        started.set()
        release.wait(60)

    def first():
        try:
            run(cfg, on_unit_done=hold)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(120)
        with pytest.raises(RunError, match=r"differing: seed \(0 -> 1\)"):
            run(dataclasses.replace(cfg, seed=1))
        with pytest.raises(RunError, match="is in use"):
            run(cfg)
    finally:
        release.set()
        t.join(180)
    assert not errors
    store = Store(str(tmp_path))
    assert store.read_json("manifest.json")["config"]["seed"] == 0
    assert not store.exists(layout.LOCK_PATH)
    with pytest.raises(RunError, match="differing: .*seed"):
        run(dataclasses.replace(cfg, seed=1))


def test_a_stale_lock_of_a_dead_driver_is_taken_over(ray_session, tmp_path):
    import socket

    (tmp_path / layout.LOCK_PATH).write_text(
        json.dumps(
            {
                "run_id": "dead",
                "config_hash": "x",
                "host": socket.gethostname(),
                "pid": 2**22 + 12345,
                "started": "2026-01-01T00:00:00Z",
                "heartbeat": time.time(),
            }
        )
    )
    summary = run(small_config(str(tmp_path), pairs=["0:1"], classes=None, num_workers=1))
    assert summary.pairs_written == 1 and not (tmp_path / layout.LOCK_PATH).exists()


def test_a_storage_outage_during_the_reduce_ends_in_a_summary(ray_session, tmp_path, monkeypatch, capsys):
    """The reduce's writes fail (injected outage): the run reports it in one line, keeps every
    finished unit, exits 1; a rerun after the outage only redoes the reduce."""
    flag = tmp_path / "outage"
    monkeypatch.setenv("BLUFF_TEST_FS_FAIL", str(flag))
    root = tmp_path / "root"
    units: list = []

    def outage_after_last(status) -> None:
        if status.kind == "pairs":
            units.append(status)
            if len(units) == 2:
                flag.write_text("down")

    summary = run(small_config(f"countfs://{root}", pairs=["0:1", "1:0"], classes=None), on_unit_done=outage_after_last)
    assert summary.pairs_written == 2
    assert any(what.startswith("reduce") and "injected storage outage" in why for what, why in summary.failed)
    report = summary.report()
    assert "FAILED reduce" in report and "rerun the same command" in report and "Traceback" not in report
    assert len(list((root / "pairs").rglob("*.parquet"))) == 2  # nothing finished was lost
    flag.unlink()
    # Releasing the run lock failed during the outage too. A new process would take the lock over
    # (its pid is gone); this test's driver is still alive, so remove it as that process would.
    assert (root / layout.LOCK_PATH).exists()
    (root / layout.LOCK_PATH).unlink()
    again = run(small_config(f"countfs://{root}", pairs=["0:1", "1:0"], classes=None))
    assert again.pairs_written == 0 and again.pairs_skipped == 2 and not again.failed
    assert (root / layout.pair_index_path(0)).exists()


def _digit_folder(root: Path, classes, n: int) -> Path:
    from PIL import Image

    from bluff_ray.engine.models.digits import digits_split

    x, y = digits_split("test")
    for c in classes:
        folder = root / str(c)
        folder.mkdir(parents=True)
        for i, img in enumerate(x[y == c][:n]):
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


def test_image_folder_run_skips_corrupt_images_and_decompression_bombs(ray_session, tmp_path, caplog):
    from PIL import Image

    images = _digit_folder(tmp_path / "images", (0, 1), 5)
    (images / "0" / "2-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    # a PNG whose header claims more pixels than Pillow will ever decode (a decompression bomb)
    Image.new("L", (1, 1)).save(images / "1" / "3-bomb.png")
    data = bytearray((images / "1" / "3-bomb.png").read_bytes())
    data[16:24] = (40000).to_bytes(4, "big") * 2  # IHDR width, height = 40000 (1.6 gigapixels)
    (images / "1" / "3-bomb.png").write_bytes(bytes(data))
    cfg = small_config(
        str(tmp_path / "out"),
        data=str(images),
        classes=[0, 1],
        target_chunk=None,
        num_workers=1,
        node_cache=str(tmp_path / "cache"),
    )
    caplog.set_level("WARNING")
    summary = run(cfg)
    assert summary.pairs_written == 2 and not summary.failed
    classes = Store(str(tmp_path / "out")).read_table("classes.parquet").to_pylist()
    assert (classes[0]["n_images"], classes[0]["n_skipped"]) == (5, 1)
    assert (classes[1]["n_images"], classes[1]["n_skipped"]) == (5, 1)


def test_images_are_read_from_storage_once_per_node(tmp_path):
    """Two actors on one node, every class needed by several units: each image file is read from
    storage exactly once in the run (the node cache), counted by an instrumented filesystem in
    every process (a subprocess with its own Ray, so the workers load the instrument)."""
    images = _digit_folder(tmp_path / "images", (0, 1, 2, 3), 3)
    log = tmp_path / "reads.log"
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "BLUFF_TEST_FS_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "run",
            "--data",
            f"countfs://{images}",
            "--out",
            str(tmp_path / "out"),
            "--classes",
            "0,1,2,3",
            "--target-chunk",
            "1",
            "--images-per-class",
            "3",
            "--attack-steps",
            "1",
            "--no-assets-enabled",
            "--no-progress",
            "--node-cache",
            str(tmp_path / "node-cache"),
            "--num-workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pairs written: 12" in proc.stdout
    reads = [l.split(" ", 2)[2] for l in log.read_text().splitlines() if " read " in l and "/images/" in l]
    assert len(reads) == 12 and len(set(reads)) == 12, reads  # 4 classes x 3 images, each read once
    pids = {l.split(" ")[0] for l in log.read_text().splitlines() if " read " in l and "/images/" in l}
    assert len(pids) >= 1


def test_cli_run_reports_written_skipped_and_failed_units(ray_session, tmp_path, capsys):
    """`bluff run --config` end to end in-process: a class without images fails its units with a
    reason, the others are written; the rerun skips them; exit code 1 while anything failed."""
    from bluff_ray import cli

    images = _digit_folder(tmp_path / "images", (0, 1), 4)  # class 2 has no folder
    conf = tmp_path / "run.yaml"
    conf.write_text(
        f"data: {images}\nclasses: [zero, one, two]\ntarget_chunk: 1\n"
        "attack: {{steps: 1}}\nassets: {{enabled: false}}\n".replace("{{", "{").replace("}}", "}")
    )
    argv = [
        "run",
        "--config",
        str(conf),
        "--out",
        str(tmp_path / "out"),
        "--images-per-class",
        "4",
        "--node-cache",
        str(tmp_path / "cache"),
    ]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert "pairs written: 2, skipped (already done): 0, failed: 4 unit(s); total requested 6" in out
    assert "FAILED unit original=2 part=0 (targets [0]): ValueError: original class 2 has no readable images" in out
    assert "FAILED unit original=0 part=2 (targets [2]): ValueError: class 2 has no readable images" in out
    assert "pair/s" in err or "s/pair" in err  # the progress bar
    store = Store(str(tmp_path / "out"))
    assert "finished" not in store.read_json("manifest.json")
    assert store.read_table(layout.pair_index_path(0)).num_rows == 1
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
    assert "pairs:" in err and "assets:" in err
    store = Store(str(out))
    manifest = store.read_json("manifest.json")
    assert manifest["finished"] and manifest["pairs_done"] == 2
    assert manifest["attack"]["steps"] == 50 and manifest["attack"]["method"] == "pgd_l2"
    assert manifest["images_per_class"] == 4
    idx = pd_pairs(out)
    assert sorted(idx) == [(0, 1), (1, 0)]
    assert store.read_table("neurons/index.parquet").num_rows > 0
    assert cli.main(argv) == 0
    stdout, _ = capsys.readouterr()
    assert "pairs written: 0, skipped (already done): 2" in stdout


def pd_pairs(root) -> list[tuple[int, int]]:
    import pandas as pd

    df = pd.read_parquet(os.path.join(root, "pair_index"))
    return list(zip(df["original"].astype(int), df["target"].astype(int)))
