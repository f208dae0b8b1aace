"""The Ray pipeline: benign stage per class, pairs stage per (original class, target chunk), reduce.

The driver (``run``) checks the storage, the config and what is already done, then keeps every
``BluffWorker`` actor busy with at most ``IN_FLIGHT`` calls each. A worker loads the model once and
writes whole objects itself (``Store``), so only small status records come back to the driver.

Idempotency: a unit's outputs are a pure function of the resolved config and the unit (its RNG
seed is derived from the base seed, the original class and the target chunk), so a retried or
resumed unit writes the same bytes. Per unit ``nodes/`` and ``edges/`` are written first and
``pairs/`` last: a ``pairs/`` object marks the unit done. Actors restart after a crash
(``max_restarts``) and Ray retries their in-flight calls (``max_task_retries``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa
import torch

from . import __version__
from .config import ResolvedRun, RunConfig, diff_fields, model_identity, redact_url, resolve
from .store import Store

log = logging.getLogger("bluff_ray.pipeline")

SCHEMA_VERSION = 1
IN_FLIGHT = 2  # calls queued per actor: the next unit is ready when one finishes
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
RESULT_PREFIXES = ("manifest.json", "classes.parquet", "pair_index.parquet", "importance", "examples",
                   "pairs", "nodes", "edges", "neurons")
CLASSES_SCHEMA = pa.schema([("class_id", pa.int32()), ("wnid", pa.string()), ("name", pa.string()),
                            ("n_images", pa.int32()), ("n_skipped", pa.int32()), ("accuracy", pa.float32())])
IMPORTANCE_SCHEMA = pa.schema([("layer", pa.string()), ("channel", pa.int32()), ("importance", pa.float32())])


class RunError(RuntimeError):
    """The run cannot start (config mismatch with the results root, bad storage, ...)."""


# ---------------------------------------------------------------------------------------------
# Work list (pure; no Ray)


@dataclass(frozen=True)
class Unit:
    """All pairs of one original class within one target chunk: one attack batch, one partition file."""

    original: int
    chunk: int
    targets: tuple[int, ...]

    @property
    def part(self) -> str:
        return f"original={self.original}/part-{self.chunk}.parquet"

    @property
    def marker(self) -> str:
        return f"pairs/{self.part}"


def plan_units(pairs: Sequence[tuple[int, int]], target_chunk: int) -> list[Unit]:
    """Group pairs by original class, targets ascending, ``target_chunk`` targets per unit."""
    by_original: dict[int, list[int]] = defaultdict(list)
    for o, t in pairs:
        by_original[int(o)].append(int(t))
    units = []
    for o in sorted(by_original):
        targets = sorted(set(by_original[o]))
        for j, start in enumerate(range(0, len(targets), target_chunk)):
            units.append(Unit(o, j, tuple(targets[start : start + target_chunk])))
    return units


def unit_seed(seed: int, original: int, chunk: int) -> int:
    """A 63-bit seed for one unit: the same on every rerun and retry, different across units."""
    digest = hashlib.sha256(f"bluff_ray/unit/{seed}/{original}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def importance_path(class_id: int) -> str:
    return f"importance/class={int(class_id)}/part-0.parquet"


def examples_path(class_id: int) -> str:
    return f"examples/class={int(class_id)}/part-0.parquet"


def pending_units(units: Sequence[Unit], done: set[str]) -> tuple[list[Unit], list[Unit]]:
    """Split units into (to do, already done) by their ``pairs/`` commit markers."""
    todo = [u for u in units if u.marker not in done]
    finished = [u for u in units if u.marker in done]
    return todo, finished


# ---------------------------------------------------------------------------------------------
# The worker (a Ray actor; also usable in-process for tests)


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
    attack_batch_size: int


class BluffWorker:
    """Holds one model (loaded once) and one image source; computes and writes work units."""

    def __init__(self, spec: WorkerSpec):
        from .data import CachedSource, make_source
        from .models import load_model

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.device = spec.device
        self.adapter = load_model(spec.model, weights=spec.weights, cache_dir=spec.model_cache, device=spec.device,
                                  storage_options=spec.storage_options or None)
        self.store = Store(spec.out, spec.storage_options)
        self.source = CachedSource(make_source(spec.data, self.adapter, spec.storage_options))

    def pid(self) -> int:
        return os.getpid()

    # --- benign stage -----------------------------------------------------------------------------
    @torch.no_grad()
    def benign(self, class_id: int, n_examples: int) -> dict:
        """Benign importance of every neuron (+ accuracy) and the class's top-N example candidates."""
        from .importance import median, spatial_max

        a, s = self.adapter, self.spec
        images, n_skipped = self.source.class_images(class_id, s.images_per_class)
        maxes: dict[str, list[torch.Tensor]] = {name: [] for name in a.layer_names}
        correct = 0
        for start in range(0, len(images), s.benign_batch_size):
            batch = images[start : start + s.benign_batch_size].to(self.device)
            logits, acts = a.forward_with_activations(batch)
            correct += int((logits.argmax(1).cpu() == class_id).sum())
            for name in a.layer_names:
                maxes[name].append(spatial_max(acts[name]).float().cpu())
        layers, channels, values = [], [], []
        for info in a.layers:
            m = torch.cat(maxes[info.name]) if maxes[info.name] else torch.empty(0, info.channels)
            imp = median(m, dim=0)
            layers += [info.name] * info.channels
            channels += list(range(info.channels))
            values += imp.tolist()
        n = int(len(images))
        accuracy = correct / n if n else math.nan
        if n_examples > 0:
            from .patches import class_topk

            self.store.write_table(examples_path(class_id), class_topk(a, images, class_id, n_examples, s.benign_batch_size))
        meta = {b"bluff.n_images": str(n).encode(), b"bluff.n_skipped": str(int(n_skipped)).encode(),
                b"bluff.accuracy": repr(float(accuracy)).encode()}
        table = pa.table({"layer": layers, "channel": channels, "importance": values},
                         schema=IMPORTANCE_SCHEMA.with_metadata(meta))
        self.store.write_table(importance_path(class_id), table)  # written last: marks the class done
        return {"class_id": int(class_id), "n_images": n, "n_skipped": int(n_skipped), "accuracy": accuracy,
                "pid": os.getpid()}

    # --- pairs stage ------------------------------------------------------------------------------
    def pairs(self, unit: Unit, attack_cfg, pathway_cfg, seed: int) -> dict:
        """Attack the original class toward every target of the unit, summarise, write the partition."""
        from .attack import attack_grid
        from .pathways import summarize_pair

        t0 = time.perf_counter()
        a, s = self.adapter, self.spec
        original, n_skipped = self.source.class_images(unit.original, s.images_per_class)
        if len(original) == 0:
            raise ValueError(f"class {unit.original} has no readable images (skipped {n_skipped})")
        # A CPU generator: the random starts are the same numbers on a laptop and on a GPU node.
        gen = torch.Generator().manual_seed(unit_seed(seed, unit.original, unit.chunk))
        grid = attack_grid(a.attack_model(), original.to(self.device), list(unit.targets), attack_cfg,
                           batch_size=s.attack_batch_size, generator=gen)
        pairs_t, nodes_t, edges_t = [], [], []
        for ti, target in enumerate(unit.targets):
            target_images, _ = self.source.class_images(target, s.images_per_class)
            if len(target_images) == 0:
                raise ValueError(f"target class {target} has no readable images")
            adv, success = grid.adv[ti], grid.success[ti]  # [S,N,C,H,W], [S,N]
            attacked = [adv[k][success[k].to(adv.device)] for k in range(adv.shape[0])]
            summary = summarize_pair(
                a, unit.original, target, original.to(self.device), target_images.to(self.device), attacked,
                n_images=len(original), n_success=[int(x) for x in success.sum(dim=1).tolist()],
                strengths=attack_cfg.strengths, cfg=pathway_cfg,
            )
            tables = summary.to_arrow()
            p = tables["pairs"]
            p = p.set_column(p.schema.get_field_index("row_group"), "row_group", pa.array([ti], pa.int32()))
            pairs_t.append(p.append_column(pa.field("part", pa.int32()), pa.array([unit.chunk], pa.int32())))
            nodes_t.append(tables["nodes"])
            edges_t.append(tables["edges"])
        del grid
        targets = list(unit.targets)
        self.store.write_table(f"nodes/{unit.part}", pa.concat_tables(nodes_t), group_by="target", groups=targets)
        self.store.write_table(f"edges/{unit.part}", pa.concat_tables(edges_t), group_by="target", groups=targets)
        self.store.write_table(unit.marker, pa.concat_tables(pairs_t))  # commit marker, written last
        return {"original": unit.original, "chunk": unit.chunk, "n_pairs": len(targets),
                "seconds": time.perf_counter() - t0, "pid": os.getpid()}

    # --- reduce: neuron assets ----------------------------------------------------------------------
    def assets(self, neurons: list[tuple[str, int]], topk: pa.Table, cfg) -> pa.Table:
        from .assets import render_neuron_assets

        return render_neuron_assets(self.adapter, self.store, neurons, topk, self.source, cfg)


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

    def report(self) -> str:
        rate = self.pairs_written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"results: {self.root}",
            f"pairs written: {self.pairs_written}, skipped (already done): {self.pairs_skipped}, "
            f"failed: {sum(1 for _ in self.failed)} unit(s); total requested {self.pairs_total}",
            f"time: {self.seconds:.1f} s with {self.workers} worker(s) ({rate:.2f} pairs/s)",
        ]
        for what, why in self.failed:
            lines.append(f"  FAILED {what}: {why}")
        if self.failed:
            lines.append("rerun the same command to retry the failed units (finished ones are skipped)")
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
        "target_chunk": run.target_chunk,
        "versions": _versions(),
        "created": created or _now(),
    })


def check_root(store: Store, run: ResolvedRun, overwrite: bool) -> dict | None:
    """Refuse a root holding another config's results (naming the differing fields), unless
    ``overwrite``, which deletes them. Returns the existing manifest when it matches."""
    if not store.exists("manifest.json"):
        return None
    old = store.read_json("manifest.json")
    new_hash = run.config_hash()
    if old.get("config_hash") == new_hash and old.get("schema_version") == SCHEMA_VERSION:
        return old
    if overwrite:
        log.warning("--overwrite: deleting the previous results under %s", store.uri())
        for rel in RESULT_PREFIXES:
            store.delete(rel)
        store.refresh()
        return None
    if old.get("schema_version") != SCHEMA_VERSION:
        fields = ["schema_version"]
    else:
        fields = diff_fields(old.get("config", {}), run.canonical()) or ["config_hash"]
    raise RunError(
        f"{store.uri()} already holds results of a different run configuration "
        f"(differing: {', '.join(fields)}). Use another output root, or pass --overwrite to delete those results."
    )


def _default_workers(resources: dict) -> tuple[int, bool]:
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        return gpus, True
    return max(1, int(resources.get("CPU", 1))), False


def _actor_class(ray):
    return ray.remote(BluffWorker)


def start_workers(ray, spec_for: Callable[[bool], WorkerSpec], num_workers: int | None, max_useful: int | None = None
                  ) -> tuple[list, bool]:
    """One actor per GPU (``num_gpus=1``) when the cluster has GPUs, else ``num_workers`` CPU actors
    (never more than ``max_useful``: an actor costs a model load)."""
    n_default, use_gpu = _default_workers(ray.cluster_resources())
    n = num_workers or n_default
    if max_useful is not None:
        n = max(1, min(n, max_useful))
    if use_gpu:
        # num_cpus=0: a GPU actor must not also hold a CPU slot, or GPU actors can take every CPU
        # and starve other work (ray#44687); the GPU is the scheduling limit.
        opts = dict(num_gpus=1, num_cpus=0)
    else:
        opts = dict(num_cpus=1)
    cls = _actor_class(ray).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **opts)
    spec = spec_for(use_gpu)
    return [cls.remote(spec) for _ in range(n)], use_gpu


@dataclass
class _Task:
    kind: str  # "benign" | "pairs" | "assets"
    payload: Any
    label: str


def _dispatch(ray, actors: list, tasks: list[_Task], submit: Callable, on_done: Callable, on_fail: Callable) -> None:
    """Keep every actor busy with up to IN_FLIGHT calls until ``tasks`` is empty and all returned."""
    queue = list(tasks)
    inflight: dict[Any, tuple[_Task, int]] = {}
    load = [0] * len(actors)

    def fill() -> None:
        while queue:
            i = min(range(len(actors)), key=lambda j: load[j])
            if load[i] >= IN_FLIGHT:
                return
            task = queue.pop(0)
            inflight[submit(actors[i], task)] = (task, i)
            load[i] += 1

    fill()
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            task, i = inflight.pop(ref)
            load[i] -= 1
            try:
                result = ray.get(ref)
            except Exception as e:  # a unit's own error, or its actor died beyond max_restarts
                on_fail(task, _reason(e))
            else:
                on_done(task, result)
        fill()


def _reason(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None:
        e = cause
    text = str(e).strip().splitlines()
    last = text[-1] if text else ""
    return f"{type(e).__name__}: {last}"[:500]


def resolve_run(cfg: RunConfig, adapter) -> ResolvedRun:
    return resolve(cfg, adapter, model_identity(adapter, cfg))


def run(
    cfg: RunConfig,
    overwrite: bool = False,
    ray_address: str | None = None,
    on_unit_done: Callable[[dict], None] | None = None,
) -> RunSummary:
    """Compute every requested pair into ``cfg.out``; skip finished units; return a summary.

    Order: model (trained/cached in the driver so actors only read it) -> resolve config ->
    storage preflight -> root/manifest check -> Ray actors -> benign + pairs stages -> reduce.
    ``on_unit_done`` receives each finished unit's status (tests use it to interrupt or kill).
    """
    from .models import load_model

    t_start = time.perf_counter()
    adapter = load_model(cfg.model, weights=cfg.weights, cache_dir=cfg.model_cache, device="cpu",
                         storage_options=cfg.storage_options or None)
    resolved = resolve_run(cfg, adapter)
    store = Store(cfg.out, cfg.storage_options)
    store.preflight()
    existing = check_root(store, resolved, overwrite)
    manifest = build_manifest(resolved, adapter, created=(existing or {}).get("created"))
    store.write_json("manifest.json", manifest)  # without "finished": the run is in progress

    units = plan_units(resolved.pairs, resolved.target_chunk)
    store.refresh()  # listings may be cached from before another process wrote
    done_markers = set(store.list("pairs"))
    todo, finished = pending_units(units, done_markers)
    done_benign = set(store.list("importance"))
    benign_todo = [c for c in resolved.classes if importance_path(c) not in done_benign]

    summary = RunSummary(root=store.uri(), config_hash=resolved.config_hash(), pairs_total=len(resolved.pairs),
                         pairs_skipped=sum(len(u.targets) for u in finished))
    log.info("%d pairs in %d units: %d units to compute, %d already done", len(resolved.pairs), len(units),
             len(todo), len(finished))

    import ray

    started_ray = False
    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        started_ray = True
    try:
        _execute(ray, cfg, resolved, adapter, store, todo, benign_todo, summary, on_unit_done)
    finally:
        if started_ray:
            ray.shutdown()
    summary.seconds = time.perf_counter() - t_start
    return summary


def _absolute(path: str | None) -> str | None:
    """Local relative paths made absolute: actors need not share the driver's working directory."""
    if path is None or "://" in path or path == "digits":
        return path
    return os.path.abspath(os.path.expanduser(path))


def _worker_spec(cfg: RunConfig, use_gpu: bool) -> WorkerSpec:
    device = cfg.device or ("cuda" if use_gpu else "cpu")
    weights = cfg.weights if cfg.weights in (None, "torchvision") else _absolute(cfg.weights)
    return WorkerSpec(model=cfg.model, weights=weights, model_cache=_absolute(cfg.model_cache),
                      data=_absolute(cfg.data), out=_absolute(cfg.out),
                      storage_options=dict(cfg.storage_options), device=device, threads=None if use_gpu else 1,
                      images_per_class=cfg.images_per_class, benign_batch_size=cfg.benign_batch_size,
                      attack_batch_size=cfg.attack_batch_size)


def _execute(ray, cfg, resolved: ResolvedRun, adapter, store: Store, todo: list[Unit], benign_todo: list[int],
             summary: RunSummary, on_unit_done) -> None:
    from tqdm.auto import tqdm

    n_examples = cfg.assets.n_patches if cfg.assets.enabled else 0
    need_workers = bool(todo or benign_todo or cfg.assets.enabled)
    useful = None if cfg.assets.enabled else len(todo) + len(benign_todo)
    actors, _ = (start_workers(ray, lambda gpu: _worker_spec(cfg, gpu), cfg.num_workers, useful)
                 if need_workers else ([], False))
    summary.workers = len(actors)
    bar = tqdm(total=summary.pairs_total, initial=summary.pairs_skipped, unit="pair", desc="pairs",
               disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
    benign_results: dict[int, dict] = {}

    def submit(actor, task: _Task):
        if task.kind == "benign":
            return actor.benign.remote(task.payload, n_examples)
        return actor.pairs.remote(task.payload, resolved.attack, cfg.pathways, cfg.seed)

    def on_done(task: _Task, result: dict) -> None:
        summary.worker_pids.add(result["pid"])
        if task.kind == "benign":
            benign_results[result["class_id"]] = result
        else:
            summary.pairs_written += result["n_pairs"]
            bar.update(result["n_pairs"])
        if on_unit_done is not None:
            on_unit_done({"kind": task.kind, **result})

    def on_fail(task: _Task, reason: str) -> None:
        log.error("%s failed: %s", task.label, reason)
        summary.failed.append((task.label, reason))

    tasks = [_Task("benign", c, f"benign class {c}") for c in benign_todo]
    tasks += [_Task("pairs", u, f"unit original={u.original} part={u.chunk} (targets {list(u.targets)})") for u in todo]
    try:
        try:
            _dispatch(ray, actors, tasks, submit, on_done, on_fail)
        finally:
            bar.close()
        reduce(ray, actors, cfg, resolved, adapter, store, benign_results, summary)
    finally:
        # Stop the actors now (also on Ctrl-C / errors): nothing keeps computing or writing after
        # the driver has returned, so what a rerun finds is exactly what this run committed.
        for actor in actors:
            ray.kill(actor, no_restart=True)


# ---------------------------------------------------------------------------------------------
# Reduce


def _benign_record(store: Store, class_id: int) -> dict | None:
    rel = importance_path(class_id)
    if not store.exists(rel):
        return None
    meta = store.read_parquet_file(rel).schema_arrow.metadata or {}
    return {"class_id": class_id, "n_images": int(meta.get(b"bluff.n_images", b"0")),
            "n_skipped": int(meta.get(b"bluff.n_skipped", b"0")),
            "accuracy": float(meta.get(b"bluff.accuracy", b"nan"))}


def classes_table(adapter, records: dict[int, dict]) -> pa.Table:
    """One row per class of the model; classes outside the run have n_images 0, accuracy NaN."""
    n = len(adapter.class_ids)
    rec = [records.get(c, {}) for c in range(n)]
    return pa.table({
        "class_id": list(range(n)),
        "wnid": list(adapter.class_ids),
        "name": list(adapter.class_names),
        "n_images": [r.get("n_images", 0) for r in rec],
        "n_skipped": [r.get("n_skipped", 0) for r in rec],
        "accuracy": [r.get("accuracy", math.nan) for r in rec],
    }, schema=CLASSES_SCHEMA)


def pair_index_table(store: Store, units: Sequence[Unit]) -> pa.Table:
    """All finished units' ``pairs`` rows with ``original`` first, sorted by (original, target)."""
    parts = []
    for u in units:
        if not store.exists(u.marker):
            continue
        t = store.read_table(u.marker)
        parts.append(t.add_column(0, pa.field("original", pa.int32()), pa.array([u.original] * t.num_rows, pa.int32())))
    if not parts:
        return None
    table = pa.concat_tables(parts)
    return table.sort_by([("original", "ascending"), ("target", "ascending")])


def displayed_neurons(store: Store, units: Sequence[Unit]) -> list[tuple[str, int]]:
    """Union over all finished pairs of their displayed (layer, channel)."""
    seen: set[tuple[str, int]] = set()
    for u in units:
        rel = f"nodes/{u.part}"
        if store.exists(u.marker):
            t = store.read_table(rel, columns=["layer", "channel"])
            seen.update(zip(t.column("layer").to_pylist(), t.column("channel").to_pylist()))
    return sorted(seen)


def reduce(ray, actors, cfg: RunConfig, resolved: ResolvedRun, adapter, store: Store, benign_results: dict,
           summary: RunSummary) -> None:
    """pair_index.parquet, classes.parquet, neuron assets, then manifest ``finished``."""
    store.refresh()
    units = plan_units(resolved.pairs, resolved.target_chunk)
    index = pair_index_table(store, units)
    if index is not None:
        store.write_table("pair_index.parquet", index)
    records = dict(benign_results)
    for c in resolved.classes:
        if c not in records:
            rec = _benign_record(store, c)
            if rec is not None:
                records[c] = rec
    store.write_table("classes.parquet", classes_table(adapter, records))
    skipped = {c: r["n_skipped"] for c, r in records.items() if r.get("n_skipped")}
    if skipped:
        log.warning("unreadable images skipped per class: %s", skipped)

    if cfg.assets.enabled and actors:
        _render_assets(ray, actors, cfg, resolved, adapter, store, units, summary)

    n_done = 0 if index is None else index.num_rows
    if not summary.failed and n_done == len(resolved.pairs):
        manifest = store.read_json("manifest.json")
        manifest["finished"] = _now()
        manifest["pairs_done"] = n_done
        store.write_json("manifest.json", manifest)


def _render_assets(ray, actors, cfg, resolved, adapter, store: Store, units, summary) -> None:
    from .assets import select_neurons, write_index
    from .patches import merge_topk

    examples = []
    if cfg.assets.n_patches > 0:
        for c in resolved.classes:
            if store.exists(examples_path(c)):
                examples.append(store.read_table(examples_path(c)))
    topk = merge_topk(examples, cfg.assets.n_patches) if examples else None
    if topk is None:
        from .patches import TOPK_SCHEMA

        topk = TOPK_SCHEMA.empty_table()
    neurons = select_neurons(adapter, displayed_neurons(store, units), cfg.assets)
    if not neurons:
        return
    n_chunks = min(len(neurons), len(actors) * 4)
    chunks = [neurons[i::n_chunks] for i in range(n_chunks)]
    topk_ref = ray.put(topk)
    tables: list[pa.Table] = []
    tasks = [_Task("assets", ch, f"neuron assets shard {i}") for i, ch in enumerate(chunks)]

    def submit(actor, task):
        return actor.assets.remote(task.payload, topk_ref, cfg.assets)

    def on_fail(task, reason):
        log.error("%s failed: %s", task.label, reason)
        summary.failed.append((task.label, reason))

    from tqdm.auto import tqdm

    log.info("rendering assets of %d neurons (feature visualizations, example patches)", len(neurons))
    with tqdm(total=len(neurons), unit="neuron", desc="assets", disable=not cfg.progress, dynamic_ncols=True,
              file=sys.stderr) as bar:
        def on_done(task, table):
            tables.append(table)
            bar.update(len(task.payload))

        _dispatch(ray, actors, tasks, submit, on_done, on_fail)
    if len(tables) == len(chunks):
        write_index(store, tables)
