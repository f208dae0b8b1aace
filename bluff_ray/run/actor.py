"""The actor (``BluffWorker``) and the typed records it sends back to the driver.

The worker holds the model and the image source; it computes a batch of classes' benign
statistics or one unit of pairs (``engine.compute_unit``) and writes whole objects itself. It runs
two calls at a time: the next unit's images load while this one computes (a lock keeps the device
to one computation). What it returns are small dataclasses (``BenignResult``, ``UnitResult``),
never the nodes or edges.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from bluff_ray.results import layout
from bluff_ray.results.markers import file_record, files_metadata
from bluff_ray.results.reduce import UnitAtlas, layer_offsets, unit_atlas
from bluff_ray.results.store import Store
from bluff_ray.run.plan import BenignTable, Unit, pair_seed

if TYPE_CHECKING:
    from bluff_ray.engine.attack import Batching


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


@dataclass
class BenignResult:
    """One class's benign statistics: from a worker, or read back from its ``importance/`` file."""

    class_id: int
    n_images: int
    n_correct: int
    n_skipped: int
    importance: np.ndarray  # float32 [sum of channels], layers in model order
    correct: np.ndarray  # bool [n_images]
    topk: pa.Table | None = None  # dataset-example candidates (only from a worker)
    pid: int = 0
    kind: str = "benign"

    @classmethod
    def from_table(cls, class_id: int, table: pa.Table) -> BenignResult:
        meta = table.schema.metadata or {}
        correct = np.frombuffer(meta.get(b"bluff.correct", b""), dtype=np.uint8) == ord("1")
        return cls(
            int(class_id),
            int(meta.get(b"bluff.n_images", b"0")),
            int(meta.get(b"bluff.n_correct", str(int(correct.sum())).encode())),
            int(meta.get(b"bluff.n_skipped", b"0")),
            table.column("importance").to_numpy().astype(np.float32),
            correct,
        )


@dataclass
class UnitResult:
    """One finished unit: its ``pairs/`` rows and compact atlas contribution, plus timings."""

    original: int
    chunk: int
    n_pairs: int
    pairs: pa.Table
    atlas: UnitAtlas
    samples: int
    batch_size: int
    seconds: float
    pid: int
    timings: dict[str, float] = field(default_factory=dict)
    kind: str = "pairs"


def importance_table(adapter, importance: dict[str, np.ndarray], meta: dict[bytes, bytes]) -> pa.Table:
    layers, channels, values = [], [], []
    for info in adapter.layers:
        layers += [info.name] * info.channels
        channels += list(range(info.channels))
        values.append(np.asarray(importance[info.name], np.float32))
    return pa.table(
        {
            "layer": layers,
            "channel": pa.array(channels, pa.int32()),
            "importance": pa.array(np.concatenate(values), pa.float32()),
        },
        schema=layout.IMPORTANCE_SCHEMA.with_metadata(meta),
    )


CONTROL = "control"  # the actor's concurrency group for stop(): one thread beside the two work calls


class BluffWorker:
    """Holds one model (loaded once) and one image source; computes and writes work units."""

    def __init__(self, spec: WorkerSpec):
        from bluff_ray.run.data import CachedSource, make_source
        from bluff_ray.run.models import load_model

        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {spec.device!r}: this worker has no usable GPU (torch.cuda.is_available() is "
                "False; check the node's NVIDIA driver and the container's CUDA build)"
            )
        self.spec = spec
        self.adapter = load_model(
            spec.model,
            weights=spec.weights,
            cache_dir=spec.model_cache,
            device=spec.device,
            storage_options=spec.storage_options or None,
        )
        self.store = Store(spec.out, spec.storage_options)
        self.source = CachedSource(
            make_source(spec.data, self.adapter, spec.storage_options, spec.node_cache, spec.images_per_class)
        )
        self.compute = threading.Lock()  # one computation on the device at a time
        self.batching: Batching | None = None

    def pid(self) -> int:
        return os.getpid()

    def stop(self, timeout_s: float) -> bool:
        """Write nothing more; True once no write is in progress. The driver calls this (in the
        ``CONTROL`` concurrency group, so it is not queued behind a unit) before it kills the actor."""
        return self.store.seal(timeout_s)

    # --- benign stage -----------------------------------------------------------------------------
    def benign(self, classes: Sequence[int], n_examples: int) -> list[BenignResult]:
        """Benign statistics of each class (engine.benign_stats); writes examples/ then importance/."""
        from bluff_ray.engine.compute import benign_stats

        out = []
        for c in classes:
            images, n_skipped = self.source.class_images(c, self.spec.images_per_class)
            with self.compute:
                st = benign_stats(self.adapter, images, c, n_examples, self.spec.benign_batch_size)
            if st.topk is not None:
                self.store.write_table(layout.examples_path(c), st.topk)
            meta = {
                b"bluff.n_images": str(st.n_images).encode(),
                b"bluff.n_correct": str(st.n_correct).encode(),
                b"bluff.n_skipped": str(int(n_skipped)).encode(),
                b"bluff.accuracy": repr(st.accuracy).encode(),
                b"bluff.correct": bytes(ord("1") if v else ord("0") for v in st.correct),
            }
            # written last: marks the class done
            self.store.write_table(layout.importance_path(c), importance_table(self.adapter, st.importance, meta))
            out.append(
                BenignResult(
                    int(c),
                    st.n_images,
                    st.n_correct,
                    int(n_skipped),
                    np.concatenate([st.importance[n] for n in self.adapter.layer_names]).astype(np.float32),
                    st.correct,
                    st.topk,
                    os.getpid(),
                )
            )
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
        imp = {l.name: vec[offsets[l.name] : offsets[l.name] + l.channels] for l in self.adapter.layers}
        stats = BenignStats(class_id, len(images), benign.correct[class_id], imp, None)
        return class_data(self.adapter, class_id, images, stats)

    def pairs(self, unit: Unit, benign: BenignTable, attack_cfg, pathway_cfg, seed: int) -> UnitResult:
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
                size = self.spec.attack_batch_size or auto_batch_size(self.adapter, attack_cfg.bf16, attack_cfg.step)
                self.batching = Batching(size)
            t1 = time.perf_counter()
            result = unit_tables(
                compute_unit(
                    self.adapter,
                    original,
                    targets,
                    attack_cfg,
                    pathway_cfg,
                    seed=[pair_seed(seed, unit.original, t) for t in unit.targets],
                    part=unit.chunk,
                    batching=self.batching,
                )
            )
            t_compute = time.perf_counter() - t1
        del original, targets
        t2 = time.perf_counter()
        groups = list(unit.targets)
        atlas = unit_atlas(result.nodes, layer_offsets(self.adapter.layers), len(attack_cfg.strengths), result.causal)
        files = {}  # what the marker records about each file: a resume checks it (results.markers)
        for kind in ("nodes", "edges", "causal", "causal_curve"):
            files[kind] = file_record(
                self.store.write_table(
                    unit.path(kind),
                    getattr(result, kind),
                    group_by="target",
                    groups=groups,
                    footer_limit=layout.footer_limit(kind),
                )
            )
        # the marker's metadata once, without the embedded Arrow schema that would repeat it
        self.store.write_bytes(
            unit.marker,
            layout.table_to_parquet(
                result.pairs, metadata={**atlas.metadata(), **files_metadata(files)}, metadata_in_schema=False
            ),
        )
        t_write = time.perf_counter() - t2
        return UnitResult(
            unit.original,
            unit.chunk,
            len(groups),
            result.pairs,
            atlas,
            result.samples,
            self.batching.size,
            time.perf_counter() - t0,
            os.getpid(),
            {"load": t_load, "compute": t_compute, "write": t_write, **result.timings},
        )

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
