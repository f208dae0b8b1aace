"""The worker pool: as many actors as the cluster can have, fed as they come, never fed when dead.

Why hand-written (Ray's ``ActorPool`` has no notion of these): on an autoscaling cluster the GPU
nodes usually do not exist when the driver starts, so the pool is sized from what the cluster
*can* have (the autoscaler's node types) and actors join as their nodes come up; an actor whose
restarts are used up (a lost spot node) leaves the pool and its units go to the others; a run
that asks for more workers than the cluster can ever provide stops before any compute instead of
waiting forever.

``plan_pool`` is pure (tests call it with made-up resources); ``WorkerPool`` drives Ray.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bluff_ray.run.cluster")

IN_FLIGHT = 2  # calls queued per actor: the next unit's data loads while the current one computes
MAX_REQUEUE = 3  # a unit whose worker died this many times fails (it may be what kills them)
WAIT_LOG_S = 10.0
GROW_CHECK_S = 2.0  # how often a pool sized from the resources present looks for new ones
STOP_TIMEOUT_S = 60.0  # shutdown waits this long for writes in progress (one unit's objects) to end


class PoolError(RuntimeError):
    """The requested workers can never start, or none started in time."""


@dataclass(frozen=True)
class PoolPlan:
    use_gpu: bool
    size: int  # actors to start now
    ceiling: int | None  # most workers the cluster can ever have (None: unknown)
    grow: bool  # start more actors as the cluster gains resources (size not given, ceiling unknown)

    @property
    def unit(self) -> str:
        return "GPU" if self.use_gpu else "CPU"


def plan_pool(
    now: dict,
    most: dict | None,
    num_workers: int | None,
    device: str | None,
    local: bool,
    max_useful: int | None = None,
) -> PoolPlan:
    """Decide GPU or CPU workers and how many.

    ``now``: the cluster's resources at start; ``most``: the most the autoscaler can provide
    (``None`` when there is no autoscaler information); ``local``: Ray was started by this run,
    so ``now`` is all there will ever be.
    """

    def ceiling_of(unit: str) -> int | None:
        if most is not None and unit in most:
            return int(most[unit])
        return int(now.get(unit, 0)) if local or most is not None else None

    gpu_ceiling = ceiling_of("GPU")
    if device == "cpu":
        use_gpu = False
    elif device is not None and str(device).startswith("cuda"):
        if gpu_ceiling == 0:
            raise PoolError(
                f"device {device!r} was requested, but the cluster has no GPU and "
                + ("cannot get one" if not local else "this machine has none")
                + ": run with --device cpu, or on a cluster with GPU workers"
            )
        use_gpu = True
    else:
        use_gpu = int(now.get("GPU", 0)) > 0 or bool(gpu_ceiling)
    unit = "GPU" if use_gpu else "CPU"
    ceiling = ceiling_of(unit)
    have = int(now.get(unit, 0))
    if ceiling is not None and ceiling >= sys.maxsize // 2:
        ceiling = None  # an unlimited node type
    if num_workers is not None:
        if ceiling is not None and num_workers > ceiling:
            where = "this machine has" if local else "the cluster can have at most"
            raise PoolError(
                f"{num_workers} workers were requested, but {where} {ceiling} {unit}"
                f"{'s' if ceiling != 1 else ''} (one worker per {unit}): lower --num-workers"
                + (" or use a larger cluster" if not local else "")
            )
        size, grow = num_workers, False
    elif ceiling is not None:
        if ceiling == 0:
            raise PoolError(f"the cluster has no {unit} and cannot get one")
        size, grow = ceiling, False
    else:
        size, grow = max(1, have), True
    if max_useful is not None:
        size = max(1, min(size, max_useful))
    return PoolPlan(use_gpu, size, ceiling, grow)


#: Where the autoscaler publishes the cluster config in the GCS internal key-value store (a
#: serialized ``autoscaler_pb2.ClusterConfig``; Ray Data and Ray Train read the same entry).
CLUSTER_CONFIG_NAMESPACE = b"__autoscaler"
CLUSTER_CONFIG_KEY = b"__autoscaler_cluster_config"


def limits_from_cluster_config(config) -> dict | None:
    """The most resources a cluster config's node groups can provide ({"GPU": 16, ...}, capped by
    its ``max_resources``; ``sys.maxsize`` for an unlimited group), or None when no group can grow
    (a fixed cluster: the resources present are what there is). ``config``: an
    ``autoscaler_pb2.ClusterConfig``."""
    if not any(
        g.max_count == -1 or g.max_count > g.min_count
        for g in config.node_group_configs
        if g.resources and g.max_count != 0
    ):
        return None
    limits: dict[str, int] = {}
    for g in config.node_group_configs:
        for key, amount in g.resources.items():
            total = limits.setdefault(key, 0)
            if g.max_count == 0 or amount == 0 or total == sys.maxsize:
                continue
            limits[key] = sys.maxsize if g.max_count == -1 else total + int(amount) * g.max_count
    cap = dict(config.max_resources)
    return {k: min(v, int(cap.get(k, sys.maxsize))) for k, v in limits.items()} or None


def autoscaler_limits(ray) -> dict | None:
    """The most resources the cluster's autoscaler can provide ({"GPU": 16, ...}), or None.

    Read from the cluster config the autoscaler publishes in the GCS internal key-value store
    (the same entry and the same "can it scale" rule as Ray Data) through the GCS client of
    ``ray.experimental.internal_kv``, not Ray's private state API. None on a cluster that cannot
    grow (a fixed or local one), where the resources present are what there is, or that may
    still gain nodes by hand.
    """
    try:
        from ray.core.generated.autoscaler_pb2 import ClusterConfig  # type: ignore[attr-defined]  # protobuf-generated at import
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        client = internal_kv_get_gcs_client()  # set by ray.init in the driver
        if client is None:
            return None
        data = client.internal_kv_get(CLUSTER_CONFIG_KEY, CLUSTER_CONFIG_NAMESPACE)
        if not data:
            return None
        return limits_from_cluster_config(ClusterConfig.FromString(data))
    except Exception as e:  # an unreadable entry: fall back to the resources present
        log.debug("no autoscaler limits: %s", error_reason(e))
        return None


@dataclass
class Task:
    kind: str
    payload: Any
    label: str
    requeued: int = 0


@dataclass
class _Worker:
    handle: Any
    index: int
    ready_ref: Any = None
    ready: bool = False
    dead: bool = False
    load: int = 0
    reason: str = ""


@dataclass
class WorkerPool:
    """Actors made by ``make_actor(index)``; ``run`` dispatches tasks to the ready, living ones."""

    ray: Any
    make_actor: Callable[[int], Any]
    plan: PoolPlan
    timeout_s: float
    resources_now: Callable[[], dict] | None = None
    stop: Callable[[Any, float], Any] | None = None  # (actor, timeout_s) -> ref: the actor writes nothing more
    workers: list[_Worker] = field(default_factory=list)
    died: list[str] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.plan.size):
            self._add()

    def _add(self) -> None:
        i = len(self.workers)
        handle = self.make_actor(i)
        self.workers.append(_Worker(handle, i, ready_ref=handle.pid.remote()))

    @property
    def alive(self) -> list[_Worker]:
        return [w for w in self.workers if not w.dead]

    @property
    def ready(self) -> list[_Worker]:
        return [w for w in self.workers if w.ready and not w.dead]

    def _mark_dead(self, w: _Worker, reason: str) -> None:
        if not w.dead:
            w.dead = True
            w.reason = reason
            self.died.append(f"worker {w.index}: {reason}")
            log.warning("worker %d left the pool: %s", w.index, reason)
            try:
                self.ray.kill(w.handle, no_restart=True)
            except Exception:
                pass

    def run(
        self,
        tasks: list[Task],
        submit: Callable[[Any, Task], Any],
        on_done: Callable[[Task, Any], None],
        on_fail: Callable[[Task, str], None],
    ) -> None:
        """Run every task; each ends in ``on_done`` or ``on_fail`` (also when every worker died)."""
        ray = self.ray
        queue = list(tasks)
        inflight: dict[Any, tuple[Task, _Worker]] = {}
        t_start = last_grow = time.monotonic()
        last_log = t_start - WAIT_LOG_S  # say at once that the run waits for its workers
        warned_timeout = False
        while queue or inflight:
            for w in self.ready:
                while queue and w.load < IN_FLIGHT:
                    task = queue.pop(0)
                    inflight[submit(w.handle, task)] = (task, w)
                    w.load += 1
            pending_ready = {w.ready_ref: w for w in self.workers if not w.ready and not w.dead}
            if not inflight and not pending_ready:
                reason = "; ".join(self.died[-3:]) or "no worker could start"
                for task in queue:
                    on_fail(task, f"no workers left ({reason})")
                queue.clear()
                break
            refs = list(inflight) + list(pending_ready)
            done, _ = ray.wait(refs, num_returns=1, timeout=2.0)
            now = time.monotonic()
            for ref in done:
                if ref in pending_ready:
                    w = pending_ready[ref]
                    try:
                        ray.get(ref)
                        w.ready = True
                    except Exception as e:  # the constructor failed (e.g. no GPU, bad weights)
                        self._mark_dead(w, error_reason(e))
                    continue
                task, w = inflight.pop(ref)
                w.load -= 1
                try:
                    result = ray.get(ref)
                except Exception as e:
                    if _is_actor_death(ray, e):
                        transient = _is_unavailable(ray, e)
                        if not transient:
                            self._mark_dead(w, error_reason(e))
                        if task.requeued < MAX_REQUEUE:
                            task.requeued += 1
                            queue.insert(0, task)
                        else:
                            on_fail(task, f"its worker died {task.requeued + 1} times: {error_reason(e)}")
                    else:
                        on_fail(task, error_reason(e))
                else:
                    on_done(task, result)
            if not self.ready and queue:
                waited = now - t_start
                if waited > self.timeout_s:
                    raise PoolError(self._timeout_message(waited))
                if now - last_log > WAIT_LOG_S:
                    log.info(
                        "waiting for workers: %d of %d ready%s", len(self.ready), len(self.alive), self._resource_note()
                    )
                    last_log = now
            elif (
                self.ready
                and not warned_timeout
                and now - t_start > self.timeout_s
                and len(self.ready) < len(self.alive)
            ):
                log.warning(
                    "%d of %d workers started within %.0f s; going on with them (the others join when "
                    "their nodes come up)",
                    len(self.ready),
                    len(self.alive),
                    self.timeout_s,
                )
                warned_timeout = True
            if self.plan.grow and self.resources_now is not None and now - last_grow > GROW_CHECK_S:
                last_grow = now
                have = int(self.resources_now().get(self.plan.unit, 0))
                while len(self.alive) < have:
                    self._add()

    def _resource_note(self) -> str:
        if self.resources_now is None:
            return ""
        have = self.resources_now().get(self.plan.unit, 0)
        if have >= len(self.alive):
            return " (starting: loading the model)"
        return (
            f" (the cluster has {have:g} {self.plan.unit} for {len(self.alive)} workers; waiting for nodes to join"
            + (", the autoscaler may be starting them)" if self.plan.ceiling is not None else ")")
        )

    def _timeout_message(self, waited: float) -> str:
        dead = f"; workers that failed: {'; '.join(self.died[-3:])}" if self.died else ""
        return (
            f"no worker started within {waited:.0f} s (worker_timeout_s): {len(self.alive)} requested, one per "
            f"{self.plan.unit}{self._resource_note()}{dead}"
        )

    def shutdown(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the ready workers' writes (``stop``), then kill every actor.

        Why both: ``ray.kill`` is asynchronous, and a killed worker's process can still write a unit's
        marker a few milliseconds after the driver has returned; a stopped one writes nothing more.
        """
        if self.stop is not None:
            refs = []
            for w in self.ready:
                try:
                    refs.append(self.stop(w.handle, timeout_s))
                except Exception:  # a dead handle: nothing to stop
                    pass
            if refs:
                _, late = self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s + 5)
                if late:
                    log.warning("%d worker(s) did not stop within %.0f s; killing them", len(late), timeout_s)
        for w in self.workers:
            try:
                self.ray.kill(w.handle, no_restart=True)
            except Exception:
                pass


def _is_actor_death(ray, e: BaseException) -> bool:
    return isinstance(e, ray.exceptions.RayActorError)


def _is_unavailable(ray, e: BaseException) -> bool:
    return isinstance(e, getattr(ray.exceptions, "ActorUnavailableError", ()))


def error_reason(e: BaseException) -> str:
    """One line for an exception (a Ray task error's cause, its last line): reports, not tracebacks."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        e = cause
    text = str(e).strip().splitlines()
    last = text[-1] if text else ""
    return f"{type(e).__name__}: {last}"[:500]
