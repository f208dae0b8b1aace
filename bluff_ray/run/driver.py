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
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import pyarrow as pa
import torch

from bluff_ray import __version__
from bluff_ray.results import layout
from bluff_ray.results.lock import LockedError, RunLock
from bluff_ray.results.markers import VERIFY_LEVELS, checksum_mismatches, files_from_metadata, listed_sizes, mismatches
from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, write_global
from bluff_ray.results.store import CorruptFile, StorageError, Store, redact_url
from bluff_ray.run.actor import CONTROL, BenignResult, BluffWorker, UnitResult, WorkerSpec
from bluff_ray.run.cluster import PoolError, Task, WorkerPool, autoscaler_limits, error_reason, plan_pool
from bluff_ray.run.config import ConfigError, ResolvedRun, RunConfig, mismatch_message, model_identity, resolve
from bluff_ray.run.plan import BenignTable, Unit, class_chunks, marker_unit, plan_units, rounds

log = logging.getLogger("bluff_ray.run.driver")

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
#: Unit markers read per round on resume (each round: READ_CONCURRENCY requests at a time).
MARKER_ROUND = 1024
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
    recomputed: list[tuple[str, str]] = field(default_factory=list)  # (unit, why) finished units redone
    stopped: str = ""  # why the run stopped before finishing, if it did

    def report(self) -> str:
        rate = self.pairs_written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"results: {self.root}",
            f"pairs written: {self.pairs_written}, skipped (already done): {self.pairs_skipped}, "
            f"failed: {len(self.failed)} unit(s); total requested {self.pairs_total}",
            f"time: {self.seconds:.1f} s with {self.workers} worker(s) ({rate:.2f} pairs/s)",
        ]
        if self.recomputed:
            lines.append(f"recomputed {len(self.recomputed)} finished unit(s) whose files did not match their marker:")
            lines += [f"  {what}: {why}" for what, why in self.recomputed[:20]]
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
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _versions() -> dict[str, str]:
    import pyarrow
    import ray

    return {
        "bluff_ray": __version__,
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "ray": ray.__version__,
        "python": sys.version.split()[0],
    }


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
    return _json_safe(
        {
            "schema_version": layout.SCHEMA_VERSION,
            "model": {
                "name": adapter.name,
                "input_shape": list(adapter.input_shape),
                "input_space": adapter.input_space,
                "metadata": meta,
            },
            "layers": [
                {
                    "name": l.name,
                    "channels": l.channels,
                    "branch_sizes": list(l.branch_sizes),
                    "bottleneck_sizes": list(l.bottleneck_sizes),
                }
                for l in adapter.layers
            ],
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
        }
    )


def _read_manifest(store: Store) -> dict | None:
    """The root's manifest.json, None when there is none; an unreadable one is a one-line error."""
    if not store.exists(layout.MANIFEST_PATH):
        return None
    try:
        manifest = store.read_json(layout.MANIFEST_PATH)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except (StorageError, ValueError, UnicodeDecodeError) as e:
        raise RunError(
            f"{store.uri(layout.MANIFEST_PATH)} is unreadable ({_short(e)}): repair or delete it, or pass "
            "--overwrite to delete the results under it and recompute"
        ) from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}"[:300] if text else type(e).__name__


def _delete_results(store: Store) -> None:
    log.warning("--overwrite: deleting the previous results under %s", store.uri())
    for rel in layout.RESULT_PREFIXES:
        store.delete(rel)
    store.refresh()


def check_root(store: Store, run: ResolvedRun, overwrite: bool) -> dict | None:
    """Refuse a root holding another config's (or another schema's) results, naming the differing
    fields, unless ``overwrite``, which deletes them (also when manifest.json is unreadable).
    Returns the existing manifest when it matches."""
    try:
        old = _read_manifest(store)
    except RunError:
        if not overwrite:
            raise
        _delete_results(store)
        return None
    if old is None:
        return None
    if old.get("config_hash") == run.config_hash() and old.get("schema_version") == layout.SCHEMA_VERSION:
        return old
    if overwrite:
        _delete_results(store)
        return None
    if old.get("schema_version") != layout.SCHEMA_VERSION:
        raise RunError(layout.version_refusal(store.uri(), old.get("schema_version")))
    raise RunError(mismatch_message(store.uri(), old.get("config", {}), run.canonical()))


def resolve_run(cfg: RunConfig, adapter) -> ResolvedRun:
    return resolve(cfg, adapter, model_identity(adapter, cfg))


@overload
def _absolute(path: str) -> str: ...
@overload
def _absolute(path: None) -> None: ...
def _absolute(path: str | None) -> str | None:
    """Local relative paths made absolute: actors need not share the driver's working directory."""
    if path is None or "://" in path or path in ("digits", "synthetic"):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _worker_spec(cfg: RunConfig, use_gpu: bool) -> WorkerSpec:
    device = cfg.device or ("cuda" if use_gpu else "cpu")
    weights = (
        cfg.weights
        if cfg.weights in (None, "torchvision", "random") or str(cfg.weights).startswith("seed:")
        else _absolute(cfg.weights)
    )
    return WorkerSpec(
        model=cfg.model,
        weights=weights,
        model_cache=_absolute(cfg.model_cache),
        data=_absolute(cfg.data),
        out=_absolute(cfg.out),
        storage_options=dict(cfg.storage_options),
        device=device,
        threads=None if use_gpu else 1,
        images_per_class=cfg.images_per_class,
        benign_batch_size=cfg.benign_batch_size,
        attack_batch_size=cfg.attack_batch_size,
        node_cache=cfg.node_cache,
    )


def load_run_model(cfg: RunConfig):
    """The model, in the driver (training/caching the digits checkpoint so actors only read it)."""
    from bluff_ray.run.models import load_model

    try:
        return load_model(
            cfg.model,
            weights=cfg.weights,
            cache_dir=cfg.model_cache,
            device="cpu",
            storage_options=cfg.storage_options or None,
        )
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"cannot load model {cfg.model!r}: {e}") from None


def _ray_address(ray_address: str | None) -> str:
    # "local": a new instance of our own, never a cluster someone else started on this machine
    return ray_address or os.environ.get("RAY_ADDRESS") or "local"


def check_inputs(cfg: RunConfig, adapter, ray_address: str | None) -> None:
    """Input errors found before Ray starts (``ConfigError``: one line, exit 2): an image source
    that cannot fit the model, an image folder that does not exist, ``--device cuda`` on a local
    run without a GPU."""
    from bluff_ray.run.data import check_source

    try:
        check_source(cfg.data, adapter)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.data not in ("digits", "synthetic"):
        data = Store(cfg.data, cfg.storage_options)
        try:
            found = data.fs.isdir(data.root)
        except Exception as e:  # unreachable storage: say so now rather than in every worker
            raise ConfigError(f"data {redact_url(cfg.data)}: cannot list it ({_short(e)})") from None
        if not found:
            raise ConfigError(
                f"data {redact_url(cfg.data)}: no such folder (expected one sub-folder of images per class)"
            )
    import ray

    local = not ray.is_initialized() and _ray_address(ray_address) == "local"
    if local and cfg.device and str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {cfg.device!r} was requested, but this machine has no GPU "
            "(torch.cuda.is_available() is False): run with --device cpu, or on a cluster with GPU "
            "workers (--ray-address)"
        )


class Terminated(SystemExit):
    """SIGTERM during a run: raised in the driver's main thread so that every ``finally`` runs
    (workers stopped, Ray shut down, the lock released); exits 143 without a traceback."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _handle_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into ``Terminated`` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


#: What ``on_unit_done`` receives: the record of each finished class or unit.
Progress = Callable[[BenignResult | UnitResult], None]


def run(
    cfg: RunConfig,
    overwrite: bool = False,
    ray_address: str | None = None,
    on_unit_done: Progress | None = None,
    verify: str | None = "size",
) -> RunSummary:
    """Compute every requested pair into ``cfg.out``; skip finished units; return a summary.

    Order: storage preflight (before any model is loaded or trained) -> model -> inputs checked
    against the model (image source, device) -> config compared with the root's manifest (the
    differing fields named, whether or not another run holds the lock) -> run lock -> manifest ->
    what is left to do -> Ray workers only if there is work for them -> benign stage -> pairs ->
    reduce -> assets -> ``finished`` once every product exists. ``on_unit_done`` receives each
    finished class's ``BenignResult`` and unit's ``UnitResult`` (tests use it to interrupt or kill).
    SIGTERM is handled like Ctrl-C: workers stopped, lock released, the summary logged; it exits 143.
    ``verify``: how finished units' files are checked against their markers ("size", the default:
    one listing per table folder; "checksum": every file read and hashed; None); units that do not
    match are recomputed and listed in the summary.
    """
    t_start = time.perf_counter()
    store = Store(cfg.out, cfg.storage_options)
    store.preflight()
    adapter = load_run_model(cfg)
    check_inputs(cfg, adapter, ray_address)
    resolved = resolve_run(cfg, adapter)
    if not overwrite:
        check_root(store, resolved, overwrite=False)  # before the lock: name the fields even while it is held
    undo = _handle_sigterm()
    summary = RunSummary(root=store.uri(), config_hash=resolved.config_hash(), pairs_total=len(resolved.pairs))
    try:
        lock = RunLock(store, resolved.config_hash())
        try:
            lock.acquire()
        except LockedError as e:
            raise RunError(str(e)) from None
        try:
            existing = check_root(store, resolved, overwrite)
            chunk = root_target_chunk(cfg, resolved, existing)
            manifest = build_manifest(resolved, adapter, created=(existing or {}).get("created"))
            manifest["targets_per_file"] = chunk
            manifest["pairs_total"] = max(len(resolved.pairs), int((existing or {}).get("pairs_total") or 0))
            store.write_json(layout.MANIFEST_PATH, manifest)  # without "finished": the run is in progress
            _run_locked(cfg, resolved, adapter, store, ray_address, on_unit_done, summary, overwrite, verify, chunk)
        finally:
            lock.release()
    except (KeyboardInterrupt, Terminated) as e:
        summary.seconds = time.perf_counter() - t_start
        summary.stopped = (
            "interrupted by "
            + ("SIGTERM" if isinstance(e, Terminated) else "Ctrl-C (SIGINT)")
            + ": workers stopped, run lock released"
        )
        log.warning("%s", summary.report())
        raise
    finally:
        undo()
    summary.seconds = time.perf_counter() - t_start
    return summary


def root_target_chunk(cfg: RunConfig, resolved: ResolvedRun, existing: dict | None) -> int:
    """Targets per unit: fixed per root (units are target ranges), so the root's own when it has one;
    a different explicit ``target_chunk`` is refused."""
    have = (existing or {}).get("targets_per_file")
    if have is None:  # unclamped: the ranges must not depend on this run's selection
        return int(cfg.target_chunk or layout.max_targets_per_file(len(resolved.strengths)))
    if cfg.target_chunk is not None and int(cfg.target_chunk) != int(have):
        raise RunError(
            f"{cfg.out} holds units of {have} targets each (target_chunk); this run asks for "
            f"{cfg.target_chunk}: leave target_chunk out, or use another output root"
        )
    return int(have)


def _run_locked(
    cfg: RunConfig,
    resolved: ResolvedRun,
    adapter,
    store: Store,
    ray_address: str | None,
    on_unit_done: Progress | None,
    summary: RunSummary,
    overwrite: bool = False,
    verify: str | None = "size",
    target_chunk: int | None = None,
) -> None:
    units = plan_units(resolved.pairs, target_chunk or resolved.target_chunk)
    store.refresh()  # listings may be cached from before another process wrote
    present = {k: Unit(*k, ()) for k in (marker_unit(r) for r in store.list("pairs")) if k is not None}
    todo = [u for u in units if (u.original, u.chunk) not in present]
    log.info(
        "%d pairs in %d units: %d units to compute, %d units in the root",
        len(resolved.pairs),
        len(units),
        len(todo),
        len(present),
    )
    ex = _Execution(cfg, resolved, adapter, store, summary, on_unit_done, ray_address, overwrite, verify)
    try:
        ex.run(todo, units, list(present.values()))
    finally:
        ex.close()


def _class_of(rel: str) -> int | None:
    """The class of an ``importance/class=<c>/...`` path."""
    try:
        return int(rel.split("class=", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError):
        return None


def _bar(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr
    )


def read_finished(
    store: Store,
    finished: Sequence[Unit],
    agg: Aggregate,
    verify: str | None = "size",
    drop_unreadable: bool = False,
    wanted: dict[tuple[int, int], Unit] | None = None,
) -> list[tuple[Unit, str]]:
    """Feed the reduce with units finished by an earlier run: their markers (rows + atlas metadata),
    read ``READ_CONCURRENCY`` at a time, ``MARKER_ROUND`` per round so memory stays bounded.

    Each marker's record of its unit's files is checked (``results.markers``; ``verify``: "size",
    from one listing per table folder, "checksum", reading every file, or None). Returns the units
    to recompute (with every target already in them), with why: files that do not match; units
    ``wanted`` with more targets than they hold; with ``drop_unreadable`` (``--overwrite``)
    unreadable markers; without it an unreadable marker is a one-line error naming it."""
    wanted = wanted or {}
    if verify not in (None, *VERIFY_LEVELS):
        raise ValueError(f"verify must be one of {VERIFY_LEVELS} or None, not {verify!r}")
    sizes: dict[str, int] = {}  # path -> size of the table folders listed so far
    listed: set[str] = set()

    def read(u: Unit):
        try:
            f = store.read_parquet_file(u.marker)
            rows, meta = f.read(), f.metadata.metadata  # the file's key-value metadata (written once)
        except Exception as e:
            if isinstance(e, StorageError) and not isinstance(e, CorruptFile):
                raise
            return e
        bad = (
            checksum_mismatches(store, files_from_metadata(meta) or {}, _unit_paths(u, meta))
            if verify == "checksum"
            else []
        )
        return rows, meta, bad

    redo: list[tuple[Unit, str]] = []
    for chunk in rounds(list(finished), MARKER_ROUND):
        for u, got in zip(chunk, store.read_many(list(chunk), read)):
            if isinstance(got, Exception):
                if not drop_unreadable:
                    if isinstance(got, StorageError):
                        raise RunError(str(got)) from None
                    raise RunError(
                        f"{store.uri(u.marker)} (a unit's commit marker) is unreadable ({_short(got)}): "
                        "delete it to have that unit recomputed, or pass --overwrite"
                    ) from None
                w = wanted.get((u.original, u.chunk))
                if w is not None:
                    redo.append((w, f"its marker {u.marker} is unreadable ({_short(got)})"))
                else:
                    log.warning(
                        "%s is unreadable (%s) and not in this run's selection: its pairs are left out",
                        store.uri(u.marker),
                        _short(got),
                    )
                continue
            rows, meta, bad = got
            have = [int(t) for t in rows.column("target").to_pylist()]
            w = wanted.get((u.original, u.chunk))
            full = Unit(u.original, u.chunk, tuple(sorted(set(have) | set(w.targets if w else ()))))
            recorded = files_from_metadata(meta)
            if recorded and verify:
                for kind in set(recorded) - listed:
                    sizes.update(listed_sizes(store, kind))
                    listed.add(kind)
                bad = sorted(set(bad) | set(mismatches(recorded, _unit_paths(u, meta), sizes)))
            if bad:
                redo.append((full, f"{', '.join(u.path(k) for k in bad)} do(es) not match the unit's marker"))
                continue
            if len(full.targets) > len(have):
                redo.append(
                    (full, f"adds target(s) {sorted(set(full.targets) - set(have))} to the {len(have)} it holds")
                )
                continue
            agg.add_unit(u.original, u.chunk, rows, atlas=UnitAtlas.from_metadata(meta))
    return redo


def _unit_paths(u: Unit, meta) -> dict[str, str]:
    return {k: u.path(k) for k in (files_from_metadata(meta) or {})}


def missing_products(store: Store, agg: Aggregate, n_strengths: int, assets: bool) -> list[str]:
    """The global files a finished root must hold that are not there (listed once): the pair index
    of every original, every ranking, overview, atlas, classes and, with assets, the neuron index
    and every file it lists."""
    store.refresh()
    present = set(store.list())
    want = [layout.pair_index_path(o) for o in agg.originals()]
    want += [layout.ranking_path(k) for k in layout.ranking_keys(n_strengths)]
    want += [layout.OVERVIEW_PATH, layout.ATLAS_PATH, layout.CLASSES_PATH]
    if assets:
        from bluff_ray.run.assets import INDEX_PATH

        want.append(INDEX_PATH)
        if INDEX_PATH in present:
            want += store.read_table(INDEX_PATH, columns=["path"]).column("path").to_pylist()
    return [rel for rel in want if rel not in present]


@dataclass
class _Execution:
    """The Ray part of one run: Ray and the worker pool (started only when there is work for
    them), the benign stage, the pairs, the reduce and the assets."""

    cfg: RunConfig
    resolved: ResolvedRun
    adapter: Any
    store: Store
    summary: RunSummary
    on_unit_done: Progress | None
    ray_address: str | None
    overwrite: bool = False
    verify: str | None = "size"
    benign: dict[int, BenignResult] = field(default_factory=dict)
    pool: WorkerPool | None = None
    ray: Any = None
    started_ray: bool = False

    def __post_init__(self) -> None:
        from bluff_ray.engine.patches import TOPK_SCHEMA

        self.n_examples = self.cfg.assets.n_patches if self.cfg.assets.enabled else 0
        self.topk = TOPK_SCHEMA.empty_table()
        self.topk_classes: set[int] = set()  # classes whose example candidates are in self.topk
        self.agg = Aggregate(
            list(self.adapter.class_names),
            [LayerSpec(l.name, l.channels) for l in self.adapter.layers],
            len(self.resolved.strengths),
        )

    def run(self, todo: list[Unit], units: list[Unit], present: list[Unit]) -> None:
        """``units``: this run's selection; ``todo``: those without a marker; ``present``: every unit
        in the root (the global files describe all of them)."""
        store = self.store
        done_benign = [c for c in (_class_of(r) for r in store.list("importance")) if c is not None]
        self.read_benign(done_benign)
        wanted = {(u.original, u.chunk): u for u in units}
        for u, why in read_finished(
            store, present, self.agg, self.verify, drop_unreadable=self.overwrite, wanted=wanted
        ):
            if why.startswith("adds target"):
                log.info("extending %s: %s", u.label, why)
            else:
                log.warning("recomputing %s: %s", u.label, why)
                self.summary.recomputed.append((u.label, why))
            todo = [*todo, u]
        redone = {(u.original, u.chunk) for u in todo}
        self.summary.pairs_skipped = sum(len(u.targets) for u in units if (u.original, u.chunk) not in redone)
        needed = sorted({c for u in todo for c in (u.original, *u.targets)} | set(self.resolved.classes))
        benign_todo = [c for c in needed if c not in self.benign]
        try:
            if benign_todo:
                self.start_pool(useful=len(todo) + len(class_chunks(benign_todo)))
                self.benign_stage(benign_todo)
            if todo:
                self.start_pool(useful=len(todo))
                self.pairs_stage(todo)
            self.reduce()
        except PoolError as e:
            self.summary.stopped = str(e)
        if self.pool is not None:
            self.summary.workers_lost = list(self.pool.died)
            if self.pool.died and not self.pool.alive and not self.summary.stopped:
                self.summary.stopped = f"every worker died ({len(self.pool.died)}); the units above were not computed"

    def start_pool(self, useful: int | None) -> WorkerPool:
        """Ray and the workers, the first time there is work for them."""
        if self.pool is not None:
            return self.pool
        import ray

        self.ray = ray
        address = _ray_address(self.ray_address)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
            self.started_ray = True
            _handle_sigterm()  # ray.init installs its own SIGTERM handler (sys.exit): ours again
        cfg = self.cfg
        if cfg.assets.enabled:
            useful = None  # the assets are rendered on every worker
        try:
            plan = plan_pool(
                ray.cluster_resources(),
                autoscaler_limits(ray),
                cfg.num_workers,
                cfg.device,
                self.started_ray and address == "local",
                None if useful is None else max(1, useful),
            )
        except PoolError as e:
            raise RunError(str(e)) from None
        spec = _worker_spec(cfg, plan.use_gpu)
        opts = dict(num_gpus=1, num_cpus=0) if plan.use_gpu else dict(num_cpus=1)
        # num_cpus=0 on GPU actors: the GPU is the scheduling limit, and GPU actors holding CPUs can
        # starve everything else (ray#44687). max_concurrency=2: the next call's images load while
        # this one computes (the actor's own lock serialises the device work); stop() has a thread
        # of its own (CONTROL) so a busy actor answers it at once.
        # (concurrency groups can only be declared in ray.remote(...), whose stubs lack the keyword form)
        remote = ray.remote(concurrency_groups={CONTROL: 1}, max_concurrency=2)  # type: ignore[call-overload]
        actor_cls = remote(BluffWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **opts)
        self.pool = pool = WorkerPool(
            ray,
            lambda i: actor_cls.remote(spec),
            plan,
            cfg.worker_timeout_s,
            resources_now=ray.cluster_resources,
            stop=lambda a, timeout_s: a.stop.options(concurrency_group=CONTROL).remote(timeout_s),
        )
        pool.start()
        self.summary.workers = len(pool.workers)
        log.info(
            "%d %s worker(s) requested%s",
            plan.size,
            plan.unit,
            f" (the cluster can have {plan.ceiling})" if plan.ceiling is not None else "",
        )
        return pool

    def close(self) -> None:
        """Stop the actors (also on Ctrl-C / SIGTERM / errors): nothing keeps computing or writing
        after the driver has returned, so what a rerun finds is exactly what this run committed."""
        try:
            if self.pool is not None:
                self.summary.workers = max(self.summary.workers, len(self.pool.workers))
                self.pool.shutdown()
        finally:
            if self.started_ray:
                self.ray.shutdown()

    def fail(self, task: Task, reason: str) -> None:
        log.error("%s failed: %s", task.label, reason)
        self.summary.failed.append((task.label, reason))

    # --- benign stage: classes not done yet on the workers; done ones read back in parallel ------
    def read_benign(self, classes: list[int]) -> None:
        store = self.store
        for chunk in rounds(classes, BENIGN_ROUND):
            for c, t in zip(chunk, store.read_many([layout.importance_path(c) for c in chunk], store.read_table)):
                self.benign[c] = BenignResult.from_table(c, t)

    def read_topk(self) -> None:
        """Example candidates of the classes benign-computed by an earlier run (for the assets)."""
        from bluff_ray.engine.patches import merge_topk

        store = self.store
        classes = [c for c in self.benign if c not in self.topk_classes]
        for chunk in rounds(classes, BENIGN_ROUND):
            parts = [
                t
                for t in store.read_many(
                    [layout.examples_path(c) for c in chunk], lambda r: store.read_table(r) if store.exists(r) else None
                )
                if t is not None
            ]
            if parts:
                self.topk = merge_topk([self.topk, *parts], self.n_examples)
            self.topk_classes.update(chunk)

    def benign_stage(self, benign_todo: list[int]) -> None:
        from bluff_ray.engine.patches import merge_topk

        n_examples = self.n_examples
        bar = _bar(
            len(self.resolved.classes),
            len(self.resolved.classes) - len(benign_todo),
            "class",
            "benign",
            self.cfg.progress,
        )

        def done(task: Task, results: list[BenignResult]) -> None:
            for r in results:
                self.summary.worker_pids.add(r.pid)
                if r.topk is not None and n_examples:
                    self.topk = merge_topk([self.topk, r.topk], n_examples)
                    self.topk_classes.add(r.class_id)
                r.topk = None
                self.benign[r.class_id] = r
                if self.on_unit_done is not None:
                    self.on_unit_done(r)
            bar.update(len(results))

        assert self.pool is not None  # started by the caller when there is work
        try:
            self.pool.run(
                [Task("benign", chunk, f"benign classes {list(chunk)}") for chunk in class_chunks(benign_todo)],
                lambda a, t: a.benign.remote(list(t.payload), n_examples),
                done,
                self.fail,
            )
        finally:
            bar.close()

    # --- pairs stage: the units left to compute, on the workers ----------------------------------
    def pairs_stage(self, todo: list[Unit]) -> None:
        summary, cfg = self.summary, self.cfg
        tasks = []
        for u in todo:
            missing = [c for c in (u.original, *u.targets) if c not in self.benign]
            if missing:
                summary.failed.append(
                    (u.label, f"no benign statistics for class(es) {missing} (their benign stage failed; see above)")
                )
                continue
            tasks.append(Task("pairs", u, u.label))
        if not tasks:
            return
        table = BenignTable(
            {c: r.importance for c, r in self.benign.items()},
            {c: np.asarray(r.correct, bool) for c, r in self.benign.items()},
        )
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
        assert self.pool is not None  # started by the caller when there is work
        try:
            self.pool.run(
                tasks, lambda a, t: a.pairs.remote(t.payload, benign_ref, attack, pathways, seed), done, self.fail
            )
        finally:
            bar.close()

    # --- reduce ------------------------------------------------------------------------------------
    def reduce(self) -> None:
        """Global files, neuron assets (whatever an earlier run left undone), then the manifest's
        ``landing`` and, once every product exists, ``finished``. A storage failure here is reported
        in the summary (nothing computed is lost: a rerun redoes only the reduce)."""
        store, agg, summary = self.store, self.agg, self.summary
        try:
            counts = {
                c: {"n_images": r.n_images, "n_correct": r.n_correct, "n_skipped": r.n_skipped}
                for c, r in self.benign.items()
            }
            write_global(store, agg, list(self.adapter.class_ids), counts)
            if self.cfg.assets.enabled and not (self.pool is not None and self.pool.died and not self.pool.alive):
                self.render_assets()
            manifest = store.read_json(layout.MANIFEST_PATH)
            landing = agg.landing()
            if landing:
                manifest["landing"] = landing
            manifest["pairs_done"] = manifest["pairs_total"] = agg.n_pairs  # every unit in the root
            missing = missing_products(store, agg, len(self.resolved.strengths), self.cfg.assets.enabled)
            if missing:
                summary.failed.append(
                    ("reduce", f"{len(missing)} product(s) missing after the reduce, e.g. {', '.join(missing[:3])}")
                )
            if not summary.failed and not summary.stopped:
                manifest["finished"] = _now()
            store.write_json(layout.MANIFEST_PATH, manifest)
        except PoolError:
            raise
        except Exception as e:  # storage outage, disk full, ...: a clear line, not a traceback
            log.error("the reduce failed: %s", error_reason(e))
            summary.failed.append(("reduce (pair index, rankings, overview, atlas, assets)", error_reason(e)))

    def assets_done(self, neurons: list[tuple[str, int]]) -> bool:
        """Whether neurons/index.parquet exists, lists exactly ``neurons``' feature visualisations,
        and every file it lists exists."""
        from bluff_ray.run.assets import INDEX_PATH

        store = self.store
        store.refresh()
        present = set(store.list("neurons"))
        if INDEX_PATH not in present:
            return False
        index = store.read_table(INDEX_PATH, columns=["layer", "channel", "kind", "path"])
        fv = {
            (l, c)
            for l, c, k in zip(
                index.column("layer").to_pylist(), index.column("channel").to_pylist(), index.column("kind").to_pylist()
            )
            if k == "feature_vis"
        }
        return fv == set(neurons) and all(p in present for p in index.column("path").to_pylist())

    def render_assets(self) -> None:
        """Feature visualisations sharded by neuron, example patches sharded by source class (each
        class's images are read once), both on the workers; then neurons/index.parquet. Skipped when
        an earlier run completed them; workers are started for them when none are running."""
        from bluff_ray.run.assets import patch_rows, select_neurons, write_index

        cfg = self.cfg
        neurons = select_neurons(self.adapter, self.agg.displayed_neurons(), cfg.assets)
        if not neurons or self.assets_done(neurons):
            return
        if cfg.assets.n_patches:
            self.read_topk()
        pool = self.start_pool(useful=None)
        n_shards = min(len(neurons), max(1, len(pool.ready) or len(pool.alive)) * 4)
        tasks = [Task("fv", neurons[i::n_shards], f"feature visualisations shard {i}") for i in range(n_shards)]
        rows = patch_rows(self.topk, neurons, cfg.assets) if cfg.assets.n_patches else []
        by_class: dict[int, list[dict]] = {}
        for r in rows:
            by_class.setdefault(int(r["class_id"]), []).append(r)
        tasks += [Task("patches", by_class[c], f"example patches of class {c}") for c in sorted(by_class)]
        tables: list[pa.Table] = []
        log.info(
            "rendering assets of %d neurons (feature visualisations, example patches from %d classes)",
            len(neurons),
            len(by_class),
        )
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
