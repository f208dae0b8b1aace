"""The driver (``run``): one run of the pipeline from a configuration to a finished results root.

Storage preflight, model, config, run lock, manifest; then the worker pool
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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from bluff_ray import __version__
from bluff_ray.results import layout
from bluff_ray.results.lock import LockedError, RunLock
from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, write_global
from bluff_ray.results.store import CorruptFile, Store, redact_url
from bluff_ray.run.actor import BenignResult, BluffWorker, UnitResult, WorkerSpec
from bluff_ray.run.cluster import PoolError, Task, WorkerPool, autoscaler_limits, error_reason, plan_pool
from bluff_ray.run.config import ConfigError, ResolvedRun, RunConfig, diff_fields, model_identity, resolve
from bluff_ray.run.plan import BenignTable, Unit, class_chunks, pending_units, plan_units, rounds

log = logging.getLogger("bluff_ray.run.driver")

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
#: Unit markers read per round on resume (each round: READ_CONCURRENCY requests at a time).
MARKER_ROUND = 4096
#: Benign classes read back per round on resume.
BENIGN_ROUND = 64


class RunError(RuntimeError):
    """The run cannot start (config mismatch with the results root, bad storage, ...)."""


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
        "schema_version": layout.SCHEMA_VERSION,
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
    try:
        old = store.read_json(layout.MANIFEST_PATH)
    except CorruptFile:  # a truncated/garbled manifest: --overwrite recovers, otherwise one line naming it
        if not overwrite:
            raise
        old = {}
    if old.get("config_hash") == run.config_hash() and old.get("schema_version") == layout.SCHEMA_VERSION:
        return old
    if overwrite:
        log.warning("--overwrite: deleting the previous results under %s", store.uri())
        for rel in layout.RESULT_PREFIXES:
            store.delete(rel)
        store.refresh()
        return None
    if old.get("schema_version") != layout.SCHEMA_VERSION:
        raise RunError(layout.version_refusal(store.uri(), old.get("schema_version")))
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


#: What ``on_unit_done`` receives: the record of each finished class or unit.
Progress = Callable[[BenignResult | UnitResult], None]


def run(
    cfg: RunConfig,
    overwrite: bool = False,
    ray_address: str | None = None,
    on_unit_done: Progress | None = None,
) -> RunSummary:
    """Compute every requested pair into ``cfg.out``; skip finished units; return a summary.

    Order: storage preflight (before any model is loaded or trained) -> model -> config against
    the model and the image source -> run lock -> root/manifest check -> Ray workers -> benign
    stage -> pairs -> reduce. ``on_unit_done`` receives each finished class's ``BenignResult``
    and unit's ``UnitResult`` (tests use it to interrupt or kill).
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


def _run_locked(cfg: RunConfig, resolved: ResolvedRun, adapter, store: Store, ray_address: str | None,
                on_unit_done: Progress | None) -> RunSummary:
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
    address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
    if not ray.is_initialized():
        # "local": a new instance of our own, never a cluster someone else started on this machine
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        started_ray = True
    try:
        _Execution(ray, cfg, resolved, adapter, store, summary, on_unit_done,
                   local=started_ray and address == "local").run(todo, finished, benign_todo)
    finally:
        if started_ray:
            ray.shutdown()
    return summary


def _bar(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def read_finished(store: Store, finished: Sequence[Unit], agg: Aggregate) -> None:
    """Feed the reduce with units finished by an earlier run: their markers (rows + atlas metadata),
    read ``READ_CONCURRENCY`` at a time, ``MARKER_ROUND`` per round so memory stays bounded."""
    for chunk in rounds(list(finished), MARKER_ROUND):
        files = store.read_many([u.marker for u in chunk], store.read_parquet_file)
        for u, f in zip(chunk, files):
            agg.add_unit(u.original, u.chunk, f.read(), atlas=UnitAtlas.from_metadata(f.schema_arrow.metadata))


@dataclass
class _Execution:
    """The Ray part of one run: the pool, the benign stage, the pairs, the reduce."""

    ray: Any
    cfg: RunConfig
    resolved: ResolvedRun
    adapter: Any
    store: Store
    summary: RunSummary
    on_unit_done: Progress | None
    local: bool
    benign: dict[int, BenignResult] = field(default_factory=dict)
    pool: WorkerPool | None = None

    def __post_init__(self) -> None:
        from bluff_ray.engine.patches import TOPK_SCHEMA

        self.n_examples = self.cfg.assets.n_patches if self.cfg.assets.enabled else 0
        self.topk = TOPK_SCHEMA.empty_table()
        self.agg = Aggregate(list(self.adapter.class_names),
                             [LayerSpec(l.name, l.channels) for l in self.adapter.layers],
                             len(self.resolved.strengths))

    def run(self, todo: list[Unit], finished: list[Unit], benign_todo: list[int]) -> None:
        cfg = self.cfg
        useful = None if cfg.assets.enabled else max(1, len(todo) + len(class_chunks(benign_todo)))
        try:
            plan = plan_pool(self.ray.cluster_resources(), autoscaler_limits(self.ray), cfg.num_workers, cfg.device,
                             self.local, useful)
        except PoolError as e:
            raise RunError(str(e)) from None
        spec = _worker_spec(cfg, plan.use_gpu)
        opts = dict(num_gpus=1, num_cpus=0) if plan.use_gpu else dict(num_cpus=1)
        # num_cpus=0 on GPU actors: the GPU is the scheduling limit, and GPU actors holding CPUs can
        # starve everything else (ray#44687). max_concurrency=2: the next call's images load while
        # this one computes (the actor's own lock serialises the device work).
        actor_cls = self.ray.remote(BluffWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                                                         max_concurrency=2, **opts)
        self.pool = pool = WorkerPool(self.ray, lambda i: actor_cls.remote(spec), plan, cfg.worker_timeout_s,
                                      resources_now=self.ray.cluster_resources)
        pool.start()
        self.summary.workers = len(pool.workers)
        log.info("%d %s worker(s) requested%s", plan.size, plan.unit,
                 f" (the cluster can have {plan.ceiling})" if plan.ceiling is not None else "")
        try:
            self.benign_stage(benign_todo)
            read_finished(self.store, finished, self.agg)
            self.pairs_stage(todo)
            self.summary.workers_lost = list(pool.died)
            if pool.died and not pool.alive:
                self.summary.stopped = f"every worker died ({len(pool.died)}); the units above were not computed"
            self.reduce()
        except PoolError as e:
            self.summary.stopped = str(e)
        finally:
            self.summary.workers = max(self.summary.workers, len(pool.workers))
            # Stop the actors now (also on Ctrl-C / errors): nothing keeps computing or writing after
            # the driver has returned, so what a rerun finds is exactly what this run committed.
            pool.shutdown()

    def fail(self, task: Task, reason: str) -> None:
        log.error("%s failed: %s", task.label, reason)
        self.summary.failed.append((task.label, reason))

    # --- benign stage: classes not done yet on the workers; done ones read back in parallel ------
    def benign_stage(self, benign_todo: list[int]) -> None:
        from bluff_ray.engine.patches import merge_topk

        store, n_examples = self.store, self.n_examples
        todo = set(benign_todo)
        done_classes = [c for c in self.resolved.classes if c not in todo]
        for chunk in rounds(done_classes, BENIGN_ROUND):
            tables = store.read_many([layout.importance_path(c) for c in chunk], store.read_table)
            exs = store.read_many([layout.examples_path(c) for c in chunk],
                                  lambda r: store.read_table(r) if store.exists(r) else None) if n_examples else []
            for c, t in zip(chunk, tables):
                self.benign[c] = BenignResult.from_table(c, t)
            parts = [t for t in exs if t is not None]
            if parts:
                self.topk = merge_topk([self.topk, *parts], n_examples)
        bar = _bar(len(self.resolved.classes), len(done_classes), "class", "benign", self.cfg.progress)

        def done(task: Task, results: list[BenignResult]) -> None:
            for r in results:
                self.summary.worker_pids.add(r.pid)
                if r.topk is not None and n_examples:
                    self.topk = merge_topk([self.topk, r.topk], n_examples)
                r.topk = None
                self.benign[r.class_id] = r
                if self.on_unit_done is not None:
                    self.on_unit_done(r)
            bar.update(len(results))

        try:
            self.pool.run([Task("benign", chunk, f"benign classes {list(chunk)}") for chunk in class_chunks(benign_todo)],
                          lambda a, t: a.benign.remote(list(t.payload), n_examples), done, self.fail)
        finally:
            bar.close()

    # --- pairs stage: the units left to compute, on the workers ----------------------------------
    def pairs_stage(self, todo: list[Unit]) -> None:
        summary, cfg = self.summary, self.cfg
        tasks = []
        for u in todo:
            missing = [c for c in (u.original, *u.targets) if c not in self.benign]
            if missing:
                summary.failed.append((u.label, f"no benign statistics for class(es) {missing} (their benign stage "
                                                "failed; see above)"))
                continue
            tasks.append(Task("pairs", u, u.label))
        if not tasks:
            return
        table = BenignTable({c: r.importance for c, r in self.benign.items()},
                            {c: np.asarray(r.correct, bool) for c, r in self.benign.items()})
        benign_ref = self.ray.put(table)
        bar = _bar(summary.pairs_total, summary.pairs_skipped, "pair", "pairs", cfg.progress)

        def done(task: Task, r: UnitResult) -> None:
            summary.worker_pids.add(r.pid)
            self.agg.add_unit(r.original, r.chunk, r.pairs, atlas=r.atlas)
            summary.pairs_written += r.n_pairs
            bar.update(r.n_pairs)
            if self.on_unit_done is not None:
                self.on_unit_done(r)

        attack, pathways, seed = self.resolved.attack, cfg.pathways, cfg.seed
        try:
            self.pool.run(tasks, lambda a, t: a.pairs.remote(t.payload, benign_ref, attack, pathways, seed),
                          done, self.fail)
        finally:
            bar.close()

    # --- reduce ------------------------------------------------------------------------------------
    def reduce(self) -> None:
        """Global files, neuron assets, then manifest ``finished``/``landing``. A storage failure here
        is reported in the summary (nothing computed is lost: a rerun redoes only the reduce)."""
        store, agg, summary = self.store, self.agg, self.summary
        try:
            counts = {c: {"n_images": r.n_images, "n_correct": r.n_correct, "n_skipped": r.n_skipped}
                      for c, r in self.benign.items()}
            write_global(store, agg, list(self.adapter.class_ids), counts)
            if self.cfg.assets.enabled and self.pool.ready:
                self.render_assets()
            manifest = store.read_json(layout.MANIFEST_PATH)
            landing = agg.landing()
            if landing:
                manifest["landing"] = landing
            manifest["pairs_done"] = agg.n_pairs
            if not summary.failed and agg.n_pairs == len(self.resolved.pairs):
                manifest["finished"] = _now()
            store.write_json(layout.MANIFEST_PATH, manifest)
        except PoolError:
            raise
        except Exception as e:  # storage outage, disk full, ...: a clear line, not a traceback
            log.error("the reduce failed: %s", error_reason(e))
            summary.failed.append(("reduce (pair index, rankings, overview, atlas, assets)", error_reason(e)))

    def render_assets(self) -> None:
        """Feature visualisations sharded by neuron, example patches sharded by source class (each
        class's images are read once), both on the workers; then neurons/index.parquet."""
        from bluff_ray.run.assets import patch_rows, select_neurons, write_index

        cfg, pool = self.cfg, self.pool
        neurons = select_neurons(self.adapter, self.agg.displayed_neurons(), cfg.assets)
        if not neurons:
            return
        n_shards = min(len(neurons), max(1, len(pool.ready)) * 4)
        tasks = [Task("fv", neurons[i::n_shards], f"feature visualisations shard {i}") for i in range(n_shards)]
        rows = patch_rows(self.topk, neurons, cfg.assets) if cfg.assets.n_patches else []
        by_class: dict[int, list[dict]] = {}
        for r in rows:
            by_class.setdefault(int(r["class_id"]), []).append(r)
        tasks += [Task("patches", by_class[c], f"example patches of class {c}") for c in sorted(by_class)]
        tables: list[pa.Table] = []
        log.info("rendering assets of %d neurons (feature visualisations, example patches from %d classes)",
                 len(neurons), len(by_class))
        bar = _bar(len(tasks), 0, "shard", "assets", cfg.progress)
        failed_before = len(self.summary.failed)

        def done(task: Task, table: pa.Table) -> None:
            tables.append(table)
            bar.update(1)

        def submit(actor, task: Task):
            if task.kind == "fv":
                return actor.feature_vis.remote(task.payload, cfg.assets)
            return actor.patches.remote(task.payload, cfg.assets)

        try:
            pool.run(tasks, submit, done, self.fail)
        finally:
            bar.close()
        if len(self.summary.failed) == failed_before:
            write_index(self.store, tables)
