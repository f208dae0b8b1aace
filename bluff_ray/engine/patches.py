"""Dataset-example patches: distributed top-N per neuron, receptive fields, crops, PNG codec.

A neuron's dataset examples are the images (over all classes) with the highest *spatial-max*
activation of its channel, each cropped to the neuron's receptive field around the argmax
position (lucid / Summit "dataset examples"). The top-N is computed in two steps so it shards by
class on Ray: ``class_topk`` per class in the benign stage, ``merge_topk`` in the reduce.

Ordering and ties are deterministic: activation descending, then class_id ascending, then
image_index ascending; within an activation map the argmax is the first maximum in row-major
order (``torch.argmax``'s documented rule).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from bluff_ray.engine.models.base import ModelAdapter

TOPK_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("rank", pa.int32()),
        ("class_id", pa.int32()),
        ("image_index", pa.int32()),
        ("activation", pa.float32()),
        ("y", pa.int32()),
        ("x", pa.int32()),
    ]
)


def spatial_argmax(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N,C,H,W] -> (max value, argmax row, argmax column), each [N,C]; first max wins (the values
    are ``importance.spatial_max``'s; the positions place the example crops)."""
    n, c, h, w = acts.shape
    flat = acts.reshape(n, c, h * w)
    idx = torch.argmax(flat, dim=-1)
    val = torch.gather(flat, -1, idx[..., None])[..., 0]
    return val, idx // w, idx % w


def topk_rows(
    layer: str, values: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, class_id: int, n: int
) -> dict[str, np.ndarray]:
    """Top-n images per channel from per-image maxima [N,C] (stable: lower image index first)."""
    n_img, n_ch = values.shape
    k = min(n, n_img)
    order = torch.sort(values, dim=0, descending=True, stable=True).indices[:k]  # [k, C]
    ch = torch.arange(n_ch).expand(k, n_ch)
    return {
        "layer": np.full(k * n_ch, layer, dtype=object),
        "channel": ch.T.reshape(-1).numpy().astype(np.int32),
        "rank": torch.arange(k).repeat(n_ch).numpy().astype(np.int32),
        "class_id": np.full(k * n_ch, class_id, dtype=np.int32),
        "image_index": order.T.reshape(-1).numpy().astype(np.int32),
        "activation": torch.gather(values, 0, order).T.reshape(-1).numpy().astype(np.float32),
        "y": torch.gather(ys, 0, order).T.reshape(-1).numpy().astype(np.int32),
        "x": torch.gather(xs, 0, order).T.reshape(-1).numpy().astype(np.int32),
    }


def topk_table(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """TOPK_SCHEMA rows from ``topk_rows`` parts."""
    if not parts:
        return TOPK_SCHEMA.empty_table()
    cols = {name: np.concatenate([p[name] for p in parts]) for name in TOPK_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=TOPK_SCHEMA)


def class_topk(adapter: ModelAdapter, images: torch.Tensor, class_id: int, n: int, batch_size: int = 64) -> pa.Table:
    """Per neuron (every layer, every channel): the top-n images of this class by spatial max.

    ``images`` are the class's images in [0,1] in the order the image source returns them;
    ``image_index`` refers to that order. Columns: TOPK_SCHEMA (y, x = argmax in the layer's map).
    """
    if n < 1:
        raise ValueError(f"n (examples per neuron) must be >= 1, got {n}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(adapter.input_shape):
        raise ValueError(f"images must be [N,{','.join(map(str, adapter.input_shape))}], got {list(images.shape)}")
    if len(images) == 0:
        return TOPK_SCHEMA.empty_table()
    _, maxima = adapter.activations(
        images, batch_size=batch_size, reduce=lambda _layer, act: tuple(t.float().cpu() for t in spatial_argmax(act))
    )
    parts = []
    for name in adapter.layer_names:
        vals, ys, xs = maxima[name]
        parts.append(topk_rows(name, vals, ys, xs, class_id, n))
    return topk_table(parts)


def merge_topk(tables: list[pa.Table], n: int) -> pa.Table:
    """Global top-n per neuron over per-class tables (activation desc, class_id, image_index asc).

    Layers keep their first-seen order, channels ascend; ``rank`` is renumbered 0..n-1.
    """
    if n < 1:
        raise ValueError(f"n (examples per neuron) must be >= 1, got {n}")
    tables = [t.select(TOPK_SCHEMA.names).cast(TOPK_SCHEMA) for t in tables if t.num_rows]
    if not tables:
        return TOPK_SCHEMA.empty_table()
    t = pa.concat_tables(tables)
    layers = t.column("layer").to_numpy(zero_copy_only=False)
    _, first = np.unique(layers, return_index=True)
    layer_order = {layers[i]: r for r, i in enumerate(sorted(first))}
    layer_key = np.array([layer_order[l] for l in layers], dtype=np.int64)
    channel = t.column("channel").to_numpy()
    act = t.column("activation").to_numpy()
    cls = t.column("class_id").to_numpy()
    img = t.column("image_index").to_numpy()
    # np.lexsort: last key is primary.
    order = np.lexsort((img, cls, -act.astype(np.float64), channel, layer_key))
    gk = layer_key[order] * (int(channel.max()) + 1) + channel[order]
    new_group = np.r_[True, gk[1:] != gk[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(gk)), 0))
    rank = np.arange(len(gk)) - group_start
    keep = order[rank < n]
    out = t.take(pa.array(keep))
    return out.set_column(out.schema.get_field_index("rank"), "rank", pa.array(rank[rank < n].astype(np.int32)))


@dataclass(frozen=True)
class ReceptiveField:
    """Where a layer's map position (y, x) looks in the input, in input pixels.

    The field of position (y, x) is centred at (offset_y + jump_y * y, offset_x + jump_x * x)
    (pixel centres at integer coordinates) and spans size_y x size_x pixels. Sizes are exact when
    the field fits in the input; for a field larger than the input they are a lower bound that is
    itself at least about the input side, so a crop is then the whole image either way.
    """

    size_y: int
    size_x: int
    jump_y: float
    jump_x: float
    offset_y: float
    offset_x: float


def _rf_axis(first_hi: int, last_lo: int, n: int, jump: float) -> tuple[int, float]:
    """Field size and offset on one axis from the far edges of the first and last positions.

    The first position's field ends at offset + h, the last one's starts at
    offset + jump*(n-1) - h (h = half the size); the input border clips neither of those edges
    while the field fits, so both unknowns follow exactly.
    """
    h = (first_hi - last_lo + jump * (n - 1)) / 2
    offset = first_hi - h
    return int(round(2 * h + 1)), offset


def receptive_fields(adapter: ModelAdapter, n_probe: int = 4, seed: int = 0) -> dict[str, ReceptiveField]:
    """Measure every mixed layer's receptive field by gradient support (model-agnostic).

    For the first (0, 0) and the last (h-1, w-1) position of each layer's map, the input pixels
    with a non-zero gradient of the sum over channels, united over ``n_probe`` random inputs
    (varying which ReLUs and max-pool winners are active), give the field's far edges; the
    jump (stride) is input size / map size. This needs no knowledge of the model's stem and
    handles the Inception branches (the largest branch wins). One forward and one backward pass.
    """
    c, h, w = adapter.input_shape
    names = adapter.layer_names
    gen = torch.Generator().manual_seed(seed)
    dtype = next(adapter.model.parameters()).dtype
    x = torch.rand(len(names) * 2 * n_probe, c, h, w, generator=gen).to(adapter.device, dtype).requires_grad_(True)
    _, acts = adapter.forward_with_activations(x)
    loss = x.new_zeros(())
    maps = {}
    for i, name in enumerate(names):
        a = acts[name].float()
        first = a[2 * i * n_probe : (2 * i + 1) * n_probe]
        last = a[(2 * i + 1) * n_probe : (2 * i + 2) * n_probe]
        maps[name] = a.shape[2:]
        loss = loss + first[:, :, 0, 0].sum() + last[:, :, -1, -1].sum()
    (grad,) = torch.autograd.grad(loss, [x])
    support = grad.abs().sum(dim=1).cpu() > 0  # [B, H, W]
    out = {}
    for i, name in enumerate(names):
        mh, mw = maps[name]
        jy, jx = h / mh, w / mw
        s_first = support[2 * i * n_probe : (2 * i + 1) * n_probe].any(dim=0)
        s_last = support[(2 * i + 1) * n_probe : (2 * i + 2) * n_probe].any(dim=0)
        if not s_first.any() or not s_last.any():  # dead for every probe: assume the whole input
            out[name] = ReceptiveField(h, w, jy, jx, (h - 1) / 2 - jy * (mh - 1) / 2, (w - 1) / 2 - jx * (mw - 1) / 2)
            continue
        first_rows = torch.nonzero(s_first.any(dim=1)).flatten()
        first_cols = torch.nonzero(s_first.any(dim=0)).flatten()
        last_rows = torch.nonzero(s_last.any(dim=1)).flatten()
        last_cols = torch.nonzero(s_last.any(dim=0)).flatten()
        sy, oy = _rf_axis(int(first_rows[-1]), int(last_rows[0]), mh, jy)
        sx, ox = _rf_axis(int(first_cols[-1]), int(last_cols[0]), mw, jx)
        out[name] = ReceptiveField(size_y=sy, size_x=sx, jump_y=jy, jump_x=jx, offset_y=oy, offset_x=ox)
    return out


def crop_box(rf: ReceptiveField, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the field of map position (y, x), shifted to lie inside the image.

    Keeping the full field size (instead of clipping at the border) gives every patch of a
    layer the same scale; the argmax's field stays inside the window.
    """

    def axis(size: int, jump: float, offset: float, pos: int, limit: int) -> tuple[int, int]:
        s = min(size, limit)
        centre = offset + jump * pos
        start = int(round(centre - (s - 1) / 2))
        return min(max(start, 0), limit - s), s

    top, hh = axis(rf.size_y, rf.jump_y, rf.offset_y, y, height)
    left, ww = axis(rf.size_x, rf.jump_x, rf.offset_x, x, width)
    return top, left, hh, ww


def crop(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """[C,H,W] image -> the [C,h,w] window ``box`` = (top, left, h, w)."""
    top, left, h, w = box
    return image[:, top : top + h, left : left + w]


def display_size(h: int, w: int, min_px: int, max_px: int) -> tuple[int, int, str]:
    """Size a small map is shown at: integer nearest upscale below min_px, downscale above max_px."""
    side = max(h, w)
    if side < min_px:
        f = -(-min_px // side)
        return h * f, w * f, "nearest"
    if side > max_px:
        scale = max_px / side
        return max(1, round(h * scale)), max(1, round(w * scale)), "lanczos"
    return h, w, "none"


def to_png(image: torch.Tensor, min_px: int = 64, max_px: int = 128) -> bytes:
    """[C,H,W] float image in [0,1] (C = 1 grey or 3 RGB) -> PNG bytes, resized for display."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a [1|3,H,W] image, got {list(image.shape)}")
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    h, w, mode = display_size(arr.shape[1], arr.shape[2], min_px, max_px)
    if mode != "none":
        pil = pil.resize((w, h), Image.Resampling.NEAREST if mode == "nearest" else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def from_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> [C,H,W] float in [0,1] (C = 1 for grey, 3 for RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        arr = np.asarray(im.convert("L") if im.mode in ("L", "I", "1") else im.convert("RGB"))
    t = torch.from_numpy(arr.copy()).float() / 255.0
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)
