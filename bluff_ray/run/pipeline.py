"""The Ray pipeline, in three parts: the plan (work units), the actor, and the driver.

- **Plan** (pure): pairs are grouped by original class into units of ``targets_per_file``
  targets; each unit writes one ``nodes``/``edges``/``causal`` file and, last, its ``pairs/``
  commit marker, and has its own seed, so a retried or resumed unit writes the same numbers.
- **Actor** (``BluffWorker``): holds the model and the image source; computes a batch of classes'
  benign statistics or one unit of pairs (``engine.compute_unit``) and writes whole objects
  itself. It runs two calls at a time: the next unit's images load while this one computes
  (a lock keeps the device to one computation).
- **Driver** (``run``): storage preflight, model, config, run lock, manifest; then the worker pool
  (``cluster.WorkerPool``) runs the benign stage, then the pairs; every result feeds the reduce
  (``reduce.Aggregate``) as it arrives, and finished units of an earlier run are read back in
  parallel rounds; the reduce writes the global files and the neuron assets.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from bluff_ray import __version__
from bluff_ray.results import layout
from bluff_ray.engine.seeds import derive_seed
from bluff_ray.run.cluster import PoolError, Task, WorkerPool, autoscaler_limits, plan_pool
from bluff_ray.run.config import ConfigError, ResolvedRun, RunConfig, diff_fields, model_identity, resolve
from bluff_ray.results.store import redact_url
from bluff_ray.results.lock import LockedError, RunLock
from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, layer_offsets, unit_atlas, write_global
from bluff_ray.results.store import Store

log = logging.getLogger("bluff_ray.run.pipeline")

SCHEMA_VERSION = layout.SCHEMA_VERSION
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
#: Classes per benign task: enough work per call to hide its overhead, small enough to spread.
BENIGN_CLASSES_PER_TASK = 16


class RunError(RuntimeError):
    """The run cannot start (config mismatch with the results root, bad storage, ...)."""


# ---------------------------------------------------------------------------------------------
# Plan (pure; no Ray)


@dataclass(frozen=True)
class Unit:
    """All pairs of one original class within one target chunk: one attack loop, one file per table."""

    original: int
    chunk: int
    targets: tuple[int, ...]

    @property
    def marker(self) -> str:
        return layout.part_path("pairs", self.original, self.chunk)

    def path(self, kind: str) -> str:
        return layout.part_path(kind, self.original, self.chunk)


def plan_units(pairs: Sequence[tuple[int, int]], target_chunk: int) -> list[Unit]:
    """Group pairs by original class, targets ascending, ``target_chunk`` targets per unit."""
    by_original: dict[int, list[int]] = {}
    for o, t in pairs:
        by_original.setdefault(int(o), []).append(int(t))
    units = []
    for o in sorted(by_original):
        targets = sorted(set(by_original[o]))
        for j, start in enumerate(range(0, len(targets), target_chunk)):
            units.append(Unit(o, j, tuple(targets[start: start + target_chunk])))
    return units


def unit_seed(seed: int, original: int, chunk: int) -> int:
    """A 63-bit seed for one unit: the same on every rerun and retry, different across units."""
    return derive_seed("unit", seed, original, chunk)


def pending_units(units: Sequence[Unit], done: set[str]) -> tuple[list[Unit], list[Unit]]:
    """Split units into (to do, already done) by their ``pairs/`` commit markers."""
    todo = [u for u in units if u.marker not in done]
    finished = [u for u in units if u.marker in done]
    return todo, finished


def class_chunks(classes: Sequence[int], size: int = BENIGN_CLASSES_PER_TASK) -> list[tuple[int, ...]]:
    classes = list(classes)
    return [tuple(classes[i: i + size]) for i in range(0, len(classes), size)]


@dataclass
class BenignTable:
    """Every class's benign statistics for the pairs stage: one object in Ray's object store."""

    importance: dict[int, np.ndarray]  # class -> float32 [sum of channels], layers in model order
    correct: dict[int, np.ndarray]  # class -> bool [N]


def importance_table(adapter, importance: dict[str, np.ndarray], meta: dict[bytes, bytes]) -> pa.Table:
    layers, channels, values = [], [], []
    for info in adapter.layers:
        layers += [info.name] * info.channels
        channels += list(range(info.channels))
        values.append(np.asarray(importance[info.name], np.float32))
    return pa.table({"layer": layers, "channel": pa.array(channels, pa.int32()),
                     "importance": pa.array(np.concatenate(values), pa.float32())},
                    schema=layout.IMPORTANCE_SCHEMA.with_metadata(meta))


def benign_record(table: pa.Table) -> dict:
    """The benign stage's record of a class from its ``importance/`` file."""
    meta = table.schema.metadata or {}
    correct = np.frombuffer(meta.get(b"bluff.correct", b""), dtype=np.uint8) == ord("1")
    n = int(meta.get(b"bluff.n_images", b"0"))
    return {"n_images": n, "n_correct": int(meta.get(b"bluff.n_correct", str(int(correct.sum())).encode())),
            "n_skipped": int(meta.get(b"bluff.n_skipped", b"0")),
            "importance": table.column("importance").to_numpy().astype(np.float32), "correct": correct}


# ---------------------------------------------------------------------------------------------
# Actor


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build itself: names and URLs only (never tensors), so a restarted
    actor can rebuild from scratch (constructor arguments in the object store can be lost)."""

    model: str
    weights: str | None
    model_cache: str | None
    data: str
    out: str
    storage_options: dict
    device: str
    threads: int | None
    images_per_class: int | None
    benign_batch_size: int
    attack_batch_size: int | None
    node_cache: str | None


class BluffWorker:
    """Holds one model (loaded once) and one image source; computes and writes work units."""

    def __init__(self, spec: WorkerSpec):
        from bluff_ray.run.data import CachedSource, make_source
        from bluff_ray.engine.models import load_model

        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {spec.device!r}: this worker has no usable GPU (torch.cuda.is_available() is "
                               "False; check the node's NVIDIA driver and the container's CUDA build)")
        self.spec = spec
        self.adapter = load_model(spec.model, weights=spec.weights, cache_dir=spec.model_cache, device=spec.device,
                                  storage_options=spec.storage_options or None)
        self.store = Store(spec.out, spec.storage_options)
        self.source = CachedSource(make_source(spec.data, self.adapter, spec.storage_options, spec.node_cache,
                                               spec.images_per_class))
        self.compute = threading.Lock()  # one computation on the device at a time
        self.batching = None

    def pid(self) -> int:
        return os.getpid()

    # --- benign stage -----------------------------------------------------------------------------
    def benign(self, classes: Sequence[int], n_examples: int) -> list[dict]:
        """Benign statistics of each class (engine.benign_stats); writes examples/ then importance/."""
        from bluff_ray.engine.compute import benign_stats

        out = []
        for c in classes:
            images, n_skipped = self.source.class_images(c, self.spec.images_per_class)
            with self.compute:
                st = benign_stats(self.adapter, images, c, n_examples, self.spec.benign_batch_size)
            if st.topk is not None:
                self.store.write_table(layout.examples_path(c), st.topk)
            meta = {b"bluff.n_images": str(st.n_images).encode(), b"bluff.n_correct": str(st.n_correct).encode(),
                    b"bluff.n_skipped": str(int(n_skipped)).encode(), b"bluff.accuracy": repr(st.accuracy).encode(),
                    b"bluff.correct": bytes(ord("1") if v else ord("0") for v in st.correct)}
            # written last: marks the class done
            self.store.write_table(layout.importance_path(c), importance_table(self.adapter, st.importance, meta))
            out.append({"class_id": int(c), "n_images": st.n_images, "n_correct": st.n_correct,
                        "n_skipped": int(n_skipped), "importance": np.concatenate(
                            [st.importance[n] for n in self.adapter.layer_names]).astype(np.float32),
                        "correct": st.correct, "topk": st.topk, "pid": os.getpid()})
        return out

    # --- pairs stage ------------------------------------------------------------------------------
    def _class_data(self, class_id: int, benign: BenignTable):
        from bluff_ray.engine.compute import BenignStats, class_data

        images, n_skipped = self.source.class_images(class_id, self.spec.images_per_class)
        if class_id not in benign.importance:
            raise ValueError(f"class {class_id} has no benign statistics (its benign stage failed)")
        if len(images) == 0:
            raise ValueError(f"class {class_id} has no readable images (skipped {n_skipped})")
        vec, offsets = benign.importance[class_id], layer_offsets(self.adapter.layers)
        imp = {l.name: vec[offsets[l.name]: offsets[l.name] + l.channels] for l in self.adapter.layers}
        stats = BenignStats(class_id, len(images), benign.correct[class_id], imp, None)
        return class_data(self.adapter, class_id, images, stats)

    def pairs(self, unit: Unit, benign: BenignTable, attack_cfg, pathway_cfg, seed: int) -> dict:
        """Compute one unit (engine.compute_unit) and write its four files, the marker last."""
        from bluff_ray.engine.attack import Batching
        from bluff_ray.engine.compute import auto_batch_size, compute_unit
        from bluff_ray.results.rows import unit_tables

        t0 = time.perf_counter()
        try:
            original = self._class_data(unit.original, benign)
        except ValueError as e:
            raise ValueError(f"original {e}") from None
        targets = [self._class_data(t, benign) for t in unit.targets]
        t_load = time.perf_counter() - t0
        with self.compute:
            if self.batching is None:
                size = self.spec.attack_batch_size or auto_batch_size(self.adapter, attack_cfg.bf16)
                self.batching = Batching(size)
            t1 = time.perf_counter()
            result = unit_tables(compute_unit(self.adapter, original, targets, attack_cfg, pathway_cfg,
                                              seed=unit_seed(seed, unit.original, unit.chunk), part=unit.chunk,
                                              batching=self.batching))
            t_compute = time.perf_counter() - t1
        del original, targets
        t2 = time.perf_counter()
        groups = list(unit.targets)
        atlas = unit_atlas(result.nodes, layer_offsets(self.adapter.layers), len(attack_cfg.strengths))
        for kind in ("nodes", "edges", "causal"):
            self.store.write_table(unit.path(kind), getattr(result, kind), group_by="target", groups=groups,
                                   footer_limit=layout.FOOTER_LIMIT)
        self.store.write_bytes(unit.marker, layout.table_to_parquet(result.pairs, metadata=atlas.metadata()))
        t_write = time.perf_counter() - t2
        return {"original": unit.original, "chunk": unit.chunk, "n_pairs": len(groups), "pid": os.getpid(),
                "pairs": result.pairs, "atlas": atlas, "samples": result.samples, "batch_size": self.batching.size,
                "seconds": time.perf_counter() - t0,
                "timings": {"load": t_load, "compute": t_compute, "write": t_write, **result.timings}}

    # --- reduce: neuron assets ----------------------------------------------------------------------
    def feature_vis(self, neurons: list[tuple[str, int]], cfg) -> pa.Table:
        from bluff_ray.run.assets import render_feature_vis

        with self.compute:
            return render_feature_vis(self.adapter, self.store, neurons, cfg)

    def patches(self, rows: list[dict], cfg) -> pa.Table:
        from bluff_ray.run.assets import render_patch_rows

        for c in sorted({r["class_id"] for r in rows}):  # read outside the device lock
            self.source.class_images(c, self.spec.images_per_class)
        with self.compute:
            return render_patch_rows(self.adapter, self.store, rows, self.source, cfg)


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass
class RunSummary:
    """What a run did: counts for the final report and the failures with their reasons."""

    root: str
    config_hash: str
    pairs_total: int
    pairs_written: int = 0
    pairs_skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (what, reason)
    seconds: float = 0.0
    workers: int = 0
    worker_pids: set[int] = field(default_factory=set)
    workers_lost: list[str] = field(default_factory=list)
    stopped: str = ""  # why the run stopped before finishing, if it did

    def report(self) -> str:
        rate = self.pairs_written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"results: {self.root}",
            f"pairs written: {self.pairs_written}, skipped (already done): {self.pairs_skipped}, "
            f"failed: {len(self.failed)} unit(s); total requested {self.pairs_total}",
            f"time: {self.seconds:.1f} s with {self.workers} worker(s) ({rate:.2f} pairs/s)",
        ]
        for w in self.workers_lost:
            lines.append(f"  worker lost: {w}")
        shown = self.failed[:20]
        for what, why in shown:
            lines.append(f"  FAILED {what}: {why}")
        if len(self.failed) > len(shown):
            lines.append(f"  ... and {len(self.failed) - len(shown)} more failures")
        if self.stopped:
            lines.append(f"STOPPED: {self.stopped}")
        if self.failed or self.stopped:
            lines.append("nothing finished is lost: rerun the same command to retry (finished units are skipped)")
        return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _versions() -> dict[str, str]:
    import pyarrow
    import ray

    return {"bluff_ray": __version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
            "ray": ray.__version__, "python": sys.version.split()[0]}


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def build_manifest(run: ResolvedRun, adapter, created: str | None = None) -> dict:
    """manifest.json (docs/FORMAT.md). Holds the canonical config; never storage options."""
    attack = dataclasses.asdict(run.attack)
    meta = {k: v for k, v in (adapter.metadata or {}).items()}
    if isinstance(meta.get("weights"), str):
        meta["weights"] = redact_url(meta["weights"])
    return _json_safe({
        "schema_version": SCHEMA_VERSION,
        "model": {"name": adapter.name, "input_shape": list(adapter.input_shape), "input_space": adapter.input_space,
                  "metadata": meta},
        "layers": [{"name": l.name, "channels": l.channels, "branch_sizes": list(l.branch_sizes),
                    "bottleneck_sizes": list(l.bottleneck_sizes)} for l in adapter.layers],
        "attack": {k: v for k, v in attack.items() if k != "strengths"},
        "strengths": list(run.strengths),
        "input_space": adapter.input_space,
        "k": run.config.pathways.k,
        "images_per_class": run.config.images_per_class,
        "config_hash": run.config_hash(),
        "config": run.canonical(),
        "classes": len(adapter.class_ids),
        "pairs_total": len(run.pairs),
        "targets_per_file": run.target_chunk,
        "causal": bool(run.config.pathways.causal),
        "versions": _versions(),
        "created": created or _now(),
    })


def check_root(store: Store, run: ResolvedRun, overwrite: bool) -> dict | None:
    """Refuse a root holding another config's (or another schema's) results, naming the differing
    fields, unless ``overwrite``, which deletes them. Returns the existing manifest when it matches."""
    if not store.exists(layout.MANIFEST_PATH):
        return None
    old = store.read_json(layout.MANIFEST_PATH)
    if old.get("config_hash") == run.config_hash() and old.get("schema_version") == SCHEMA_VERSION:
        return old
    if overwrite:
        log.warning("--overwrite: deleting the previous results under %s", store.uri())
        for rel in layout.RESULT_PREFIXES:
            store.delete(rel)
        store.refresh()
        return None
    if old.get("schema_version") != SCHEMA_VERSION:
        raise RunError(f"{store.uri()} holds results in schema version {old.get('schema_version')} (written by an "
                       f"older bluff_ray); this version writes version {SCHEMA_VERSION}. Use another output root, or "
                       "pass --overwrite to delete those results and recompute.")
    fields = diff_fields(old.get("config", {}), run.canonical()) or ["config_hash"]
    raise RunError(
        f"{store.uri()} already holds results of a different run configuration "
        f"(differing: {', '.join(fields)}). Use another output root, or pass --overwrite to delete those results."
    )


def resolve_run(cfg: RunConfig, adapter) -> ResolvedRun:
    return resolve(cfg, adapter, model_identity(adapter, cfg))


def _absolute(path: str | None) -> str | None:
    """Local relative paths made absolute: actors need not share the driver's working directory."""
    if path is None or "://" in path or path in ("digits", "synthetic"):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _worker_spec(cfg: RunConfig, use_gpu: bool) -> WorkerSpec:
    device = cfg.device or ("cuda" if use_gpu else "cpu")
    weights = cfg.weights if cfg.weights in (None, "torchvision", "random") or str(cfg.weights).startswith("seed:") \
        else _absolute(cfg.weights)
    return WorkerSpec(model=cfg.model, weights=weights, model_cache=_absolute(cfg.model_cache),
                      data=_absolute(cfg.data), out=_absolute(cfg.out),
                      storage_options=dict(cfg.storage_options), device=device, threads=None if use_gpu else 1,
                      images_per_class=cfg.images_per_class, benign_batch_size=cfg.benign_batch_size,
                      attack_batch_size=cfg.attack_batch_size, node_cache=cfg.node_cache)


def load_run_model(cfg: RunConfig):
    """The model, in the driver (training/caching the digits checkpoint so actors only read it)."""
    from bluff_ray.engine.models import load_model

    try:
        return load_model(cfg.model, weights=cfg.weights, cache_dir=cfg.model_cache, device="cpu",
                          storage_options=cfg.storage_options or None)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"cannot load model {cfg.model!r}: {e}") from None


def run(
    cfg: RunConfig,
    overwrite: bool = False,
    ray_address: str | None = None,
    on_unit_done: Callable[[dict], None] | None = None,
) -> RunSummary:
    """Compute every requested pair into ``cfg.out``; skip finished units; return a summary.

    Order: storage preflight (before any model is loaded or trained) -> model -> config against
    the model and the image source -> run lock -> root/manifest check -> Ray workers -> benign
    stage -> pairs -> reduce. ``on_unit_done`` receives each finished unit's status (tests use it
    to interrupt or kill).
    """
    from bluff_ray.run.data import check_source

    t_start = time.perf_counter()
    store = Store(cfg.out, cfg.storage_options)
    store.preflight()
    adapter = load_run_model(cfg)
    try:
        check_source(cfg.data, adapter)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    resolved = resolve_run(cfg, adapter)
    lock = RunLock(store, resolved.config_hash())
    try:
        lock.acquire()
    except LockedError as e:
        raise RunError(str(e)) from None
    try:
        existing = check_root(store, resolved, overwrite)
        manifest = build_manifest(resolved, adapter, created=(existing or {}).get("created"))
        store.write_json(layout.MANIFEST_PATH, manifest)  # without "finished": the run is in progress
        summary = _run_locked(cfg, resolved, adapter, store, ray_address, on_unit_done)
    finally:
        lock.release()
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_locked(cfg, resolved: ResolvedRun, adapter, store: Store, ray_address, on_unit_done) -> RunSummary:
    units = plan_units(resolved.pairs, resolved.target_chunk)
    store.refresh()  # listings may be cached from before another process wrote
    todo, finished = pending_units(units, set(store.list("pairs")))
    done_benign = set(store.list("importance"))
    benign_todo = [c for c in resolved.classes if layout.importance_path(c) not in done_benign]
    summary = RunSummary(root=store.uri(), config_hash=resolved.config_hash(), pairs_total=len(resolved.pairs),
                         pairs_skipped=sum(len(u.targets) for u in finished))
    log.info("%d pairs in %d units: %d units to compute, %d already done", len(resolved.pairs), len(units),
             len(todo), len(finished))
    import ray

    started_ray = False
    if not ray.is_initialized():
        # "local": a new instance of our own, never a cluster someone else started on this machine
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        started_ray = True
    try:
        _execute(ray, cfg, resolved, adapter, store, todo, finished, benign_todo, summary, on_unit_done,
                 started_ray and address == "local")
    finally:
        if started_ray:
            ray.shutdown()
    return summary


def _bar(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def _execute(ray, cfg: RunConfig, resolved: ResolvedRun, adapter, store: Store, todo: list[Unit],
             finished: list[Unit], benign_todo: list[int], summary: RunSummary, on_unit_done, local: bool) -> None:
    n_examples = cfg.assets.n_patches if cfg.assets.enabled else 0
    useful = None if cfg.assets.enabled else max(1, len(todo) + len(class_chunks(benign_todo)))
    try:
        plan = plan_pool(ray.cluster_resources(), autoscaler_limits(ray), cfg.num_workers, cfg.device, local, useful)
    except PoolError as e:
        raise RunError(str(e)) from None
    spec = _worker_spec(cfg, plan.use_gpu)
    opts = dict(num_gpus=1, num_cpus=0) if plan.use_gpu else dict(num_cpus=1)
    # num_cpus=0 on GPU actors: the GPU is the scheduling limit, and GPU actors holding CPUs can
    # starve everything else (ray#44687). max_concurrency=2: the next call's images load while
    # this one computes (the actor's own lock serialises the device work).
    actor_cls = ray.remote(BluffWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                                               max_concurrency=2, **opts)
    pool = WorkerPool(ray, lambda i: actor_cls.remote(spec), plan, cfg.worker_timeout_s,
                      resources_now=ray.cluster_resources)
    pool.start()
    summary.workers = len(pool.workers)
    log.info("%d %s worker(s) requested%s", plan.size, plan.unit,
             f" (the cluster can have {plan.ceiling})" if plan.ceiling is not None else "")
    agg = Aggregate(list(adapter.class_names), [LayerSpec(l.name, l.channels) for l in adapter.layers],
                    len(resolved.strengths))
    benign: dict[int, dict] = {}
    from bluff_ray.engine.patches import TOPK_SCHEMA, merge_topk

    topk = TOPK_SCHEMA.empty_table()

    def fail(task: Task, reason: str) -> None:
        log.error("%s failed: %s", task.label, reason)
        summary.failed.append((task.label, reason))

    try:
        # --- benign stage: classes not done yet on the workers; done ones read back in parallel ---
        done_classes = [c for c in resolved.classes if c not in set(benign_todo)]
        for chunk in _rounds(done_classes, 64):
            tables = store.read_many([layout.importance_path(c) for c in chunk], store.read_table)
            exs = store.read_many([layout.examples_path(c) for c in chunk],
                                  lambda r: store.read_table(r) if store.exists(r) else None) if n_examples else []
            for c, t in zip(chunk, tables):
                benign[c] = benign_record(t)
            parts = [t for t in exs if t is not None]
            if parts:
                topk = merge_topk([topk, *parts], n_examples)
        bar = _bar(len(resolved.classes), len(done_classes), "class", "benign", cfg.progress)

        def benign_done(task: Task, results: list[dict]) -> None:
            nonlocal topk
            for r in results:
                summary.worker_pids.add(r["pid"])
                benign[r["class_id"]] = r
                if r.get("topk") is not None and n_examples:
                    topk = merge_topk([topk, r.pop("topk")], n_examples)
                r.pop("topk", None)
                if on_unit_done is not None:
                    on_unit_done({"kind": "benign", "class_id": r["class_id"], "pid": r["pid"]})
            bar.update(len(results))

        try:
            pool.run([Task("benign", chunk, f"benign classes {list(chunk)}") for chunk in class_chunks(benign_todo)],
                     lambda a, t: a.benign.remote(list(t.payload), n_examples), benign_done, fail)
        finally:
            bar.close()
        table = BenignTable({c: r["importance"] for c, r in benign.items()},
                            {c: np.asarray(r["correct"], bool) for c, r in benign.items()})
        benign_ref = ray.put(table)

        # --- pairs stage: finished units read back in parallel, the rest on the workers ---
        _read_finished(store, finished, agg)
        bar = _bar(summary.pairs_total, summary.pairs_skipped, "pair", "pairs", cfg.progress)

        def pairs_done(task: Task, r: dict) -> None:
            summary.worker_pids.add(r["pid"])
            agg.add_unit(r["original"], r["chunk"], r["pairs"], atlas=r["atlas"])
            summary.pairs_written += r["n_pairs"]
            bar.update(r["n_pairs"])
            if on_unit_done is not None:
                on_unit_done({"kind": "pairs", **{k: v for k, v in r.items() if k not in ("pairs", "atlas")}})

        tasks = []
        for u in todo:
            missing = [c for c in (u.original, *u.targets) if c not in benign]
            label = f"unit original={u.original} part={u.chunk} (targets {_targets_text(u.targets)})"
            if missing:
                summary.failed.append((label, f"no benign statistics for class(es) {missing} (their benign stage "
                                              "failed; see above)"))
                continue
            tasks.append(Task("pairs", u, label))
        try:
            pool.run(tasks, lambda a, t: a.pairs.remote(t.payload, benign_ref, resolved.attack, cfg.pathways, cfg.seed),
                     pairs_done, fail)
        finally:
            bar.close()
        summary.workers_lost = list(pool.died)
        if pool.died and not pool.alive:
            summary.stopped = f"every worker died ({len(pool.died)}); the units above were not computed"
        _reduce(pool, cfg, resolved, adapter, store, agg, benign, topk, summary)
    except PoolError as e:
        summary.stopped = str(e)
    finally:
        summary.workers = max(summary.workers, len(pool.workers))
        # Stop the actors now (also on Ctrl-C / errors): nothing keeps computing or writing after
        # the driver has returned, so what a rerun finds is exactly what this run committed.
        pool.shutdown()


def _targets_text(targets: Sequence[int]) -> str:
    t = list(targets)
    return str(t) if len(t) <= 8 else f"{t[0]}..{t[-1]}, {len(t)} targets"


def _rounds(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _read_finished(store: Store, finished: Sequence[Unit], agg: Aggregate) -> None:
    """Feed the reduce with units finished by an earlier run: their markers (rows + atlas metadata),
    read ``READ_CONCURRENCY`` at a time, a few thousand per round so memory stays bounded."""
    for chunk in _rounds(list(finished), 4096):
        files = store.read_many([u.marker for u in chunk], store.read_parquet_file)
        for u, f in zip(chunk, files):
            agg.add_unit(u.original, u.chunk, f.read(), atlas=UnitAtlas.from_metadata(f.schema_arrow.metadata))


def _reduce(pool: WorkerPool, cfg: RunConfig, resolved: ResolvedRun, adapter, store: Store, agg: Aggregate,
            benign: dict[int, dict], topk: pa.Table, summary: RunSummary) -> None:
    """Global files, neuron assets, then manifest ``finished``/``landing``. A storage failure here
    is reported in the summary (nothing computed is lost: a rerun redoes only the reduce)."""
    try:
        write_global(store, agg, list(adapter.class_ids), benign)
        if cfg.assets.enabled and pool.ready:
            _render_assets(pool, cfg, adapter, store, agg, topk, summary)
        manifest = store.read_json(layout.MANIFEST_PATH)
        landing = agg.landing()
        if landing:
            manifest["landing"] = landing
        n_done = agg.n_pairs
        manifest["pairs_done"] = n_done
        if not summary.failed and n_done == len(resolved.pairs):
            manifest["finished"] = _now()
        store.write_json(layout.MANIFEST_PATH, manifest)
    except PoolError:
        raise
    except Exception as e:  # storage outage, disk full, ...: a clear line, not a traceback
        from bluff_ray.run.cluster import _reason

        log.error("the reduce failed: %s", _reason(e))
        summary.failed.append(("reduce (pair index, rankings, overview, atlas, assets)", _reason(e)))


def _render_assets(pool: WorkerPool, cfg, adapter, store: Store, agg: Aggregate, topk: pa.Table,
                   summary: RunSummary) -> None:
    """Feature visualisations sharded by neuron, example patches sharded by source class (each
    class's images are read once), both on the workers; then neurons/index.parquet."""
    from bluff_ray.run.assets import patch_rows, select_neurons, write_index

    neurons = select_neurons(adapter, agg.displayed_neurons(), cfg.assets)
    if not neurons:
        return
    n_shards = min(len(neurons), max(1, len(pool.ready)) * 4)
    tasks = [Task("fv", neurons[i::n_shards], f"feature visualisations shard {i}") for i in range(n_shards)]
    rows = patch_rows(topk, neurons, cfg.assets) if cfg.assets.n_patches else []
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(int(r["class_id"]), []).append(r)
    tasks += [Task("patches", by_class[c], f"example patches of class {c}") for c in sorted(by_class)]
    tables: list[pa.Table] = []
    log.info("rendering assets of %d neurons (feature visualisations, example patches from %d classes)",
             len(neurons), len(by_class))
    bar = _bar(len(tasks), 0, "shard", "assets", cfg.progress)
    failed_before = len(summary.failed)

    def done(task: Task, table: pa.Table) -> None:
        tables.append(table)
        bar.update(1)

    def fail(task: Task, reason: str) -> None:
        log.error("%s failed: %s", task.label, reason)
        summary.failed.append((task.label, reason))

    def submit(actor, task: Task):
        if task.kind == "fv":
            return actor.feature_vis.remote(task.payload, cfg.assets)
        return actor.patches.remote(task.payload, cfg.assets)

    try:
        pool.run(tasks, submit, done, fail)
    finally:
        bar.close()
    if len(summary.failed) == failed_before:
        write_index(store, tables)
