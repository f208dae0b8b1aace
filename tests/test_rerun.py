"""Reruns after faults (issue: nothing lost, nothing stale, nothing corrupt accepted): every reduce
product and asset complete after any rerun, `finished` only when they all exist, SIGTERM handled
like Ctrl-C, input errors before Ray starts, corrupt manifest or marker named in one line and
recovered by --overwrite. Real runs on local Ray (digits), real files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bluff_ray.results import layout
from bluff_ray.results.store import StorageError, Store
from bluff_ray.run.assets import INDEX_PATH
from bluff_ray.run.config import RunConfig
from bluff_ray.run.driver import RunError, missing_products, run

pytestmark = pytest.mark.ray

RAY_STARTED = "Token authentication is enabled"  # what ray.init prints when it starts a local instance


def tiny(out: str, **kw) -> RunConfig:
    base = RunConfig()
    values = dict(
        out=out,
        pairs=["0:1", "1:0"],
        images_per_class=6,
        target_chunk=1,
        progress=False,
        num_workers=1,
        attack=dataclasses.replace(base.attack, steps=2),
        assets=dataclasses.replace(base.assets, fv_steps=4, n_patches=2),
    )
    values.update(kw)
    return RunConfig(**values)


def test_a_rerun_completes_assets_and_products_an_earlier_run_left_undone(ray_session, tmp_path):
    """The driver died during the reduce (a ranking, the neuron index and half the pictures
    missing, no `finished`): the rerun computes no pair but renders what is missing (the same
    bytes as the first time) and only then marks the root finished."""
    root = tmp_path / "root"
    first = run(tiny(str(root)))
    assert first.pairs_written == 2 and not first.failed
    store = Store(str(root))
    assert store.read_json(layout.MANIFEST_PATH)["finished"]
    assert missing_products(store, _agg_of(store), 10, True) == []
    pictures = sorted(p for p in store.list("neurons") if p.endswith(".png"))
    assert len(pictures) >= 4
    before = {rel: store.read_bytes(rel) for rel in pictures}
    ranking = layout.ranking_path(layout.ranking_keys(10)[0])

    store.delete(INDEX_PATH)
    store.delete(ranking)
    for rel in pictures[::2]:
        store.delete(rel)
    manifest = store.read_json(layout.MANIFEST_PATH)
    del manifest["finished"]
    store.write_json(layout.MANIFEST_PATH, manifest)
    assert set(missing_products(store, _agg_of(store), 10, True)) >= {INDEX_PATH, ranking}

    again = run(tiny(str(root)))
    assert again.pairs_written == 0 and again.pairs_skipped == 2 and not again.failed
    assert again.workers >= 1  # workers were started for the assets alone
    store.refresh()
    assert store.read_json(layout.MANIFEST_PATH)["finished"]
    assert missing_products(store, _agg_of(store), 10, True) == []
    for rel, data in before.items():
        assert store.read_bytes(rel) == data, rel
    index = store.read_table(INDEX_PATH)
    assert sorted(p for p in index.column("path").to_pylist() if p.endswith(".png")) == pictures

    third = run(tiny(str(root)))  # everything done: no worker at all
    assert third.pairs_written == 0 and third.workers == 0 and not third.failed


def _agg_of(store: Store):
    """The reduce's view of a root's finished units (the pair index needs only the originals)."""
    from bluff_ray.results.reduce import Aggregate, LayerSpec
    from bluff_ray.run.driver import read_finished
    from bluff_ray.run.plan import Unit

    m = store.read_json(layout.MANIFEST_PATH)
    agg = Aggregate(
        [str(i) for i in range(m["classes"])],
        [LayerSpec(l["name"], l["channels"]) for l in m["layers"]],
        len(m["strengths"]),
    )
    units = []
    for rel in store.list("pairs"):
        o = int(rel.split("original=")[1].split("/")[0])
        j = int(rel.split("part-")[1].split(".")[0])
        units.append(Unit(o, j, ()))
    read_finished(store, units, agg)
    return agg


def _bluff(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bluff_ray.cli", "run", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
        **popen,
    )


def test_sigterm_stops_workers_releases_the_lock_and_reports_like_ctrl_c(tmp_path):
    out = tmp_path / "out"
    args = [
        "--out",
        str(out),
        "--classes",
        "0,1,2",
        "--target-chunk",
        "1",
        "--images-per-class",
        "6",
        "--attack-steps",
        "2",
        "--no-assets-enabled",
        "--num-workers",
        "1",
    ]
    proc = _bluff(*args)
    deadline = time.monotonic() + 400
    while not list((out / "pairs").rglob("*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr and "pairs written:" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and "Fatal Python" not in stderr and "*** SIG" not in stderr, stderr[-3000:]
    assert not (out / layout.LOCK_PATH).exists()
    done = len(list((out / "pairs").rglob("*.parquet")))
    assert 1 <= done < 6
    proc = _bluff(*args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"skipped (already done): {done}," in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/bluff-images"], "no such folder"),
        (["--device", "cuda"], "no GPU"),
    ],
)
def test_input_errors_exit_2_before_ray_starts(tmp_path, args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _bluff("--out", str(tmp_path / "out"), "--classes", "0,1", *args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert message in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert RAY_STARTED not in stderr and "worker(s) requested" not in stderr, stderr[-3000:]
    assert not (tmp_path / "out" / "pairs").exists()


def test_corrupt_manifest_or_marker_is_one_line_naming_the_file_and_overwrite_recovers(ray_session, tmp_path):
    cfg = tiny(str(tmp_path), pairs=["0:1"], assets=dataclasses.replace(RunConfig().assets, enabled=False))
    assert run(cfg).pairs_written == 1
    manifest = tmp_path / layout.MANIFEST_PATH
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated
    with pytest.raises((RunError, StorageError)) as e:
        run(cfg)
    assert "manifest.json" in str(e.value) and "\n" not in str(e.value) and "--overwrite" in str(e.value)
    assert run(cfg, overwrite=True).pairs_written == 1
    assert json.loads(manifest.read_text())["finished"]

    marker = tmp_path / "pairs/original=0/part-1.parquet"
    marker.write_bytes(b"PAR1" + os.urandom(300) + b"PAR1")
    with pytest.raises((RunError, StorageError)) as e:
        run(cfg)
    assert "pairs/original=0/part-1.parquet" in str(e.value) and "\n" not in str(e.value)
    assert run(cfg, overwrite=True).pairs_written == 1
    assert Path(tmp_path, layout.pair_index_path(0)).exists()


def test_a_resume_recomputes_units_whose_files_do_not_match_their_marker(ray_session, tmp_path):
    """Each marker records its unit's files as written (size, SHA-256); a resume checks sizes from
    a listing by default (a truncated file is found) and, with verify="checksum", the content (a
    garbled file of the same size is found); those units are recomputed, said in the summary, and
    the files are the same bytes as before the damage."""
    import base64
    import hashlib

    import pyarrow.parquet as pq

    cfg = tiny(str(tmp_path), assets=dataclasses.replace(RunConfig().assets, enabled=False))
    assert run(cfg).pairs_written == 2
    store = Store(str(tmp_path))
    before = {rel: store.read_bytes(rel) for rel in store.list() if rel.split("/")[0] in ("nodes", "edges", "causal")}
    for o, t in ((0, 1), (1, 0)):
        meta = pq.read_metadata(tmp_path / layout.part_path("pairs", o, t)).metadata
        # the marker's metadata once: in the file's key-value metadata, not again in the Arrow schema
        assert b"bluff.atlas" in meta and b"bluff.atlas" not in base64.b64decode(meta[b"ARROW:schema"])
        recorded = json.loads(meta[b"bluff.files"])
        assert {"nodes", "edges", "causal"} <= set(recorded)
        for kind, rec in recorded.items():
            data = store.read_bytes(layout.part_path(kind, o, t))  # target_chunk 1: unit j holds target j
            assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    nodes0, edges1 = layout.part_path("nodes", 0, 1), layout.part_path("edges", 1, 0)
    (tmp_path / nodes0).write_bytes(before[nodes0][:-100])
    garbled = bytearray(before[edges1])
    garbled[len(garbled) // 2 : len(garbled) // 2 + 64] = bytes(64)
    (tmp_path / edges1).write_bytes(bytes(garbled))

    again = run(cfg)  # sizes: the truncated file only
    assert [what for what, _ in again.recomputed] == ["unit original=0 part=1 (targets [1])"]
    assert again.pairs_written == 1 and again.pairs_skipped == 1 and not again.failed
    assert "recomputed 1 finished unit(s)" in again.report() and nodes0 in again.report()
    assert store.read_bytes(nodes0) == before[nodes0]
    assert store.read_bytes(edges1) == bytes(garbled)

    checked = run(cfg, verify="checksum")
    assert [what for what, _ in checked.recomputed] == ["unit original=1 part=0 (targets [0])"]
    for rel, data in before.items():
        assert store.read_bytes(rel) == data, rel
    assert run(cfg, verify="checksum").recomputed == []
