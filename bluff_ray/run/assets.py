"""Neuron assets on a results store: feature visualisations, dataset-example patches, index.

Layout (docs/FORMAT.md):
    neurons/feature_vis/<layer>/<channel>.png
    neurons/patches/<layer>/<channel>-<rank>.png
    neurons/index.parquet

Every PNG is written whole with one ``store.write_bytes`` (one PUT). Files that already exist are
not rendered again, so an interrupted reduce resumes where it stopped; ``neurons/index.parquet``
is written last (``write_index``), once every shard has returned its rows.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from bluff_ray.engine.featurevis import FeatureVisConfig, render_channels
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.patches import TOPK_SCHEMA, crop, crop_box, from_png, receptive_fields, to_png
from bluff_ray.engine.settings import check, setting

INDEX_PATH = "neurons/index.parquet"
INDEX_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("kind", pa.string()),
        ("rank", pa.int32()),
        ("path", pa.string()),
        ("class_id", pa.int32()),
        ("image_index", pa.int32()),
        ("activation", pa.float32()),
    ]
)
# Default feature-vis side for models whose input is larger (224-px ImageNet models): lucid's
# renders are 128 px, large enough to read and 3x cheaper than 224 px per step.
DEFAULT_MAX_FV_SIZE = 128
# A mismatch larger than this between the benign stage's activation and the one recomputed on the
# reloaded image means the image source changed (other files/order): refuse to write wrong patches.
_RTOL, _ATOL = 5e-2, 1e-3


@dataclass(frozen=True)
class AssetConfig:
    """What neuron assets the reduce renders.

    enabled: render anything at all. all_neurons: every channel of every layer instead of only
    the neurons shown in some pair's graph. n_patches: dataset examples per neuron.
    fv_steps: feature-vis Adam steps. fv_size: side of the rendered image; None = the model's
    input side, capped at 128 (8 px for digits, 128 px for GoogLeNet). seed: feature-vis seed.
    png_min_px / png_max_px: PNGs smaller than min_px are upscaled by an integer factor with
    nearest neighbour (8x8 digits -> 64x64, pixels stay crisp); larger than max_px are downscaled.
    fv_batch_size: neurons optimised together.
    """

    # Bounds: generous limits no real run needs.
    enabled: bool = setting(True, "render neuron assets (feature visualisations and dataset-example patches)")
    all_neurons: bool = setting(False, "render assets for every neuron instead of only the displayed ones")
    n_patches: int = setting(8, "dataset-example patches per neuron", ge=0, le=1024)
    fv_steps: int = setting(256, "feature-visualisation optimisation steps", ge=0, le=100_000)
    fv_size: int | None = setting(
        None, "feature-visualisation side in pixels (default: the model input side, at most 128)", ge=2, le=4096
    )
    seed: int = setting(0, "feature-visualisation seed", ge=0, lt=2**63)
    png_min_px: int = setting(64, "smaller PNGs are upscaled (nearest neighbour) to at least this side", ge=1, le=4096)
    png_max_px: int = setting(128, "larger PNGs are downscaled to at most this side", ge=1, le=4096)
    fv_batch_size: int = setting(32, "neurons optimised together in one feature-visualisation batch", ge=1, le=65_536)

    def __post_init__(self) -> None:
        check(self)  # types and bounds declared on the fields
        if self.png_min_px > self.png_max_px:
            raise ValueError(f"need png_min_px <= png_max_px, got {self.png_min_px} and {self.png_max_px}")

    def featurevis_config(self, adapter: ModelAdapter) -> FeatureVisConfig:
        size = self.fv_size or min(adapter.input_shape[1], DEFAULT_MAX_FV_SIZE)
        return FeatureVisConfig(size=size, steps=self.fv_steps, seed=self.seed, batch_size=self.fv_batch_size)


class AssetStore(Protocol):
    """The part of ``bluff_ray.results.store.Store`` the assets need."""

    def exists(self, rel: str) -> bool: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def write_table(self, rel: str, table: pa.Table) -> object: ...


class ImageSourceLike(Protocol):
    def class_images(self, class_id: int, max_images: int | None) -> tuple[torch.Tensor, int]: ...


def feature_vis_path(layer: str, channel: int) -> str:
    return f"neurons/feature_vis/{layer}/{int(channel)}.png"


def patch_path(layer: str, channel: int, rank: int) -> str:
    return f"neurons/patches/{layer}/{int(channel)}-{int(rank)}.png"


def select_neurons(adapter: ModelAdapter, shown: Iterable[tuple[str, int]], cfg: AssetConfig) -> list[tuple[str, int]]:
    """The neurons to render: all channels (cfg.all_neurons) or the shown ones, in model order."""
    order = {name: i for i, name in enumerate(adapter.layer_names)}
    if cfg.all_neurons:
        return [(l.name, c) for l in adapter.layers for c in range(l.channels)]
    uniq = {(str(l), int(c)) for l, c in shown}
    unknown = sorted({l for l, _ in uniq if l not in order})
    if unknown:
        raise ValueError(f"unknown layers {unknown}; {adapter.name} has {adapter.layer_names}")
    return sorted(uniq, key=lambda n: (order[n[0]], n[1]))


# Receptive fields per model (a pass over the model; the reduce calls us once per shard).
_RF_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def _receptive_fields(adapter: ModelAdapter) -> dict:
    rf = _RF_CACHE.get(adapter.model)
    if rf is None:
        rf = _RF_CACHE[adapter.model] = receptive_fields(adapter)
    return rf


def _index_rows(rows: list[dict]) -> pa.Table:
    if not rows:
        return INDEX_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def _image_at_size(png: bytes, size: int) -> torch.Tensor:
    """Decode a feature-vis PNG back to the size the model saw (exact for integer upscales)."""
    img = from_png(png)
    h = img.shape[1]
    if h == size:
        return img
    if h % size == 0:
        f = h // size
        return img[:, ::f, ::f]
    return F.interpolate(img[None], size=(size, size), mode="area")[0]


def render_feature_vis(
    adapter: ModelAdapter, store: AssetStore, neurons: Sequence[tuple[str, int]], cfg: AssetConfig
) -> pa.Table:
    """Render and write the missing feature visualisations; index rows for all of ``neurons``.

    ``activation`` is the channel's spatial max on the stored PNG (decoded, at render size), so
    it describes exactly the picture people see, also for files written by an earlier run.
    """
    fv_cfg = cfg.featurevis_config(adapter)
    if adapter.input_shape[1:] != (fv_cfg.size, fv_cfg.size) and not _accepts_size(adapter, fv_cfg.size):
        raise ValueError(f"{adapter.name} does not accept {fv_cfg.size}px input; set fv_size to its input size")
    missing = [n for n in neurons if not store.exists(feature_vis_path(*n))]
    pngs: dict[tuple[str, int], bytes] = {}
    if missing:
        images, _ = render_channels(adapter, missing, fv_cfg)
        for n, img in zip(missing, images):
            png = to_png(img, cfg.png_min_px, cfg.png_max_px)
            store.write_bytes(feature_vis_path(*n), png)
            pngs[n] = png
    for n in neurons:
        if n not in pngs:
            pngs[n] = store.read_bytes(feature_vis_path(*n))
    rows = []
    if neurons:
        imgs = torch.stack([_image_at_size(pngs[n], fv_cfg.size) for n in neurons])
        _, maxima = adapter.activations(
            imgs,
            sorted({layer for layer, _ in neurons}),
            fv_cfg.batch_size,
            reduce=lambda _layer, a: a.amax(dim=(2, 3)).float().cpu(),
            dtype=_dtype(adapter),
        )  # image b is neuron b's feature visualisation: its own channel's max
        act = [float(maxima[layer][b, int(channel)]) for b, (layer, channel) in enumerate(neurons)]
        for (layer, channel), a in zip(neurons, act):
            rows.append(
                dict(
                    layer=layer,
                    channel=int(channel),
                    kind="feature_vis",
                    rank=0,
                    path=feature_vis_path(layer, channel),
                    class_id=-1,
                    image_index=-1,
                    activation=a,
                )
            )
    return _index_rows(rows)


def _dtype(adapter: ModelAdapter) -> torch.dtype:
    return next(adapter.model.parameters()).dtype


def _accepts_size(adapter: ModelAdapter, size: int) -> bool:
    try:
        with torch.no_grad():
            adapter.model(
                torch.full((1, adapter.input_shape[0], size, size), 0.5, device=adapter.device, dtype=_dtype(adapter))
            )
        return True
    except RuntimeError:
        return False


def patch_rows(topk: pa.Table, neurons: Sequence[tuple[str, int]], cfg: AssetConfig) -> list[dict]:
    """The ``merge_topk`` rows that become patches: rank < n_patches and a positive activation (a
    channel that never fires has no examples worth showing), for ``neurons`` only."""
    want = {(l, int(c)) for l, c in neurons}
    t = topk.select(TOPK_SCHEMA.names).to_pylist()
    return [r for r in t if (r["layer"], r["channel"]) in want and r["rank"] < cfg.n_patches and r["activation"] > 0]


def render_patch_rows(
    adapter: ModelAdapter, store: AssetStore, rows: Sequence[dict], source: ImageSourceLike, cfg: AssetConfig
) -> pa.Table:
    """Write the missing patches of ``rows`` (``patch_rows`` output, any classes); index rows for all.

    Each image is loaded from ``source`` once per class (the pipeline sends one class's rows per
    call, so a class's images are read once per run), checked against the recorded activation,
    and cropped to the layer's receptive field around the recorded argmax.
    """
    todo = [r for r in rows if not store.exists(patch_path(r["layer"], r["channel"], r["rank"]))]
    if todo:
        rfs = _receptive_fields(adapter)
        by_class: dict[int, list[dict]] = {}
        for r in todo:
            by_class.setdefault(r["class_id"], []).append(r)
        for class_id in sorted(by_class):
            _write_class_patches(adapter, store, source, class_id, by_class[class_id], rfs, cfg)
    out = [
        dict(
            layer=r["layer"],
            channel=r["channel"],
            kind="patch",
            rank=r["rank"],
            path=patch_path(r["layer"], r["channel"], r["rank"]),
            class_id=r["class_id"],
            image_index=r["image_index"],
            activation=r["activation"],
        )
        for r in rows
    ]
    return _index_rows(out)


def render_patches(
    adapter: ModelAdapter,
    store: AssetStore,
    neurons: Sequence[tuple[str, int]],
    topk: pa.Table,
    source: ImageSourceLike,
    cfg: AssetConfig,
) -> pa.Table:
    """Write the missing dataset-example patches of ``neurons``; index rows for all of them."""
    return render_patch_rows(adapter, store, patch_rows(topk, neurons, cfg), source, cfg)


def _write_class_patches(adapter, store, source, class_id, rows, rfs, cfg) -> None:
    need = sorted({r["image_index"] for r in rows})
    images, _ = source.class_images(class_id, need[-1] + 1)
    if len(images) <= need[-1]:
        raise RuntimeError(
            f"image source returned {len(images)} images for class {class_id}, but the benign stage "
            f"recorded image_index {need[-1]}: the source changed since the run started"
        )
    pos = {idx: i for i, idx in enumerate(need)}
    sub = images[need]
    layers = sorted({r["layer"] for r in rows})
    _, maps = adapter.activations(sub, layers, 64, reduce=lambda _layer, a: a.float().cpu(), dtype=_dtype(adapter))
    for r in rows:  # check every row before writing any: a changed source writes nothing
        fmap = maps[r["layer"]][pos[r["image_index"]], r["channel"]]
        got, want = float(fmap.amax()), float(r["activation"])
        if abs(got - want) > _ATOL + _RTOL * abs(want):
            raise RuntimeError(
                f"{r['layer']}-{r['channel']}: class {class_id} image {r['image_index']} now gives max "
                f"activation {got:.4g}, the benign stage recorded {want:.4g}; the image source or model "
                "changed since the run started (refusing to write mismatched patches)"
            )
    for r in rows:
        img = sub[pos[r["image_index"]]]
        box = crop_box(rfs[r["layer"]], r["y"], r["x"], img.shape[1], img.shape[2])
        png = to_png(crop(img, box), cfg.png_min_px, cfg.png_max_px)
        store.write_bytes(patch_path(r["layer"], r["channel"], r["rank"]), png)


def render_neuron_assets(
    adapter: ModelAdapter,
    store: AssetStore,
    neurons: list[tuple[str, int]],
    topk: pa.Table,
    source: ImageSourceLike,
    cfg: AssetConfig,
) -> pa.Table:
    """Feature visualisation and example patches for each (layer, channel); index rows.

    ``topk`` is the global ``merge_topk`` table (it may hold more neurons than ``neurons``, so
    the reduce can shard ``neurons`` over actors and pass the same table to each). Existing
    files are skipped. Returns rows in the ``neurons/index.parquet`` schema.
    """
    if not cfg.enabled:
        return INDEX_SCHEMA.empty_table()
    neurons = list(dict.fromkeys((str(l), int(c)) for l, c in neurons))
    sizes = {l.name: l.channels for l in adapter.layers}
    for layer, channel in neurons:
        if layer not in sizes or not 0 <= channel < sizes[layer]:
            raise ValueError(f"unknown neuron {layer}-{channel} for model {adapter.name}")
    fv = render_feature_vis(adapter, store, neurons, cfg)
    pt = render_patches(adapter, store, neurons, topk, source, cfg) if cfg.n_patches else INDEX_SCHEMA.empty_table()
    return pa.concat_tables([fv, pt])


def write_index(store: AssetStore, tables: list[pa.Table]) -> None:
    """Write neurons/index.parquet from the shards' rows (sorted; duplicate paths refused)."""
    tables = [t.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA) for t in tables if t.num_rows]
    table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
    paths = table.column("path").to_numpy(zero_copy_only=False)
    uniq, counts = np.unique(paths, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"duplicate asset rows for {list(uniq[counts > 1][:5])}: a neuron was rendered by two shards")
    table = table.sort_by(
        [("layer", "ascending"), ("channel", "ascending"), ("kind", "ascending"), ("rank", "ascending")]
    )
    store.write_table(INDEX_PATH, table)
