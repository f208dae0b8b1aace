"""Dataset-example top-N, its distributed merge, receptive fields and crops, against direct computations."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn
from torchvision.models.googlenet import BasicConv2d, Inception

from bluff_ray.engine.models.base import LayerInfo, ModelAdapter
from bluff_ray.engine.patches import (
    TOPK_SCHEMA,
    ReceptiveField,
    class_topk,
    crop_box,
    display_size,
    from_png,
    merge_topk,
    receptive_fields,
    to_png,
)


@pytest.fixture(scope="module")
def digits64(digits):
    """A float64 copy: batched and image-by-image forwards then agree to ~1e-15, so the brute-force
    comparison checks ranking and argmax logic, not float32 batch-size noise."""
    a = copy.deepcopy(digits)
    a.model.double()
    return a


@pytest.fixture(scope="module")
def digit_images():
    from bluff_ray.run.data import DigitsSource

    src = DigitsSource("test")
    return {c: src.class_images(c, 12)[0].double() for c in (0, 1, 2)}


def brute_force_maxima(adapter, images):
    """Per image, layer, channel: (max, y, x) with the first maximum in row-major order, image by image."""
    out = {}
    for i, img in enumerate(images):
        with torch.no_grad():
            _, acts = adapter.forward_with_activations(img[None])
        for layer, a in acts.items():
            flat = a[0].flatten(1)  # [C, H*W]
            v = flat.max(dim=1).values
            pos = torch.arange(flat.shape[1]).expand_as(flat)
            first = torch.where(flat == v[:, None], pos, flat.shape[1]).min(dim=1).values  # first maximum
            for c in range(a.shape[1]):
                # ranked as stored: float32
                f = int(first[c])
                out[(layer, c, i)] = (float(np.float32(v[c].item())), f // a.shape[3], f % a.shape[3])
    return out


def test_class_topk_matches_brute_force(digits64, digit_images):
    digits = digits64
    images = digit_images[1]
    n = 4
    table = class_topk(digits, images, class_id=1, n=n, batch_size=5)  # batches split the class
    assert table.schema == TOPK_SCHEMA
    got = {(r["layer"], r["channel"], r["rank"]): r for r in table.to_pylist()}
    brute = brute_force_maxima(digits, images)
    n_neurons = sum(l.channels for l in digits.layers)
    assert table.num_rows == n_neurons * n
    for info in digits.layers:
        for c in range(info.channels):
            ranked = sorted(range(len(images)), key=lambda i: (-brute[(info.name, c, i)][0], i))[:n]
            for rank, i in enumerate(ranked):
                r = got[(info.name, c, rank)]
                v, y, x = brute[(info.name, c, i)]
                assert r["class_id"] == 1
                assert r["image_index"] == i, (info.name, c, rank)
                assert r["activation"] == v
                assert (r["y"], r["x"]) == (y, x)


def test_class_topk_fewer_images_than_n_and_bad_input(digits64, digit_images):
    digits = digits64
    t = class_topk(digits, digit_images[0][:2], 0, n=5)
    assert set(t.column("rank").to_pylist()) == {0, 1}
    assert class_topk(digits, digit_images[0][:0], 0, n=5).num_rows == 0
    with pytest.raises(ValueError, match="images must be"):
        class_topk(digits, torch.zeros(3, 3, 8, 8, dtype=torch.float64), 0, n=2)
    with pytest.raises(ValueError, match="n "):
        class_topk(digits, digit_images[0], 0, n=0)


def test_merge_topk_equals_global_topk(digits64, digit_images):
    digits = digits64
    n = 3
    parts = [class_topk(digits, digit_images[c], c, n) for c in (2, 0, 1)]
    merged = merge_topk(parts, n)
    # direct: all images of all classes at once, ordered (activation desc, class, index)
    brute = {c: brute_force_maxima(digits, digit_images[c]) for c in (0, 1, 2)}
    rows = merged.to_pylist()
    assert merged.num_rows == sum(l.channels for l in digits.layers) * n
    by_neuron: dict = {}
    for r in rows:
        by_neuron.setdefault((r["layer"], r["channel"]), []).append(r)
    for info in digits.layers:
        for ch in range(info.channels):
            cand = [(brute[c][(info.name, ch, i)][0], c, i) for c in (0, 1, 2) for i in range(len(digit_images[c]))]
            cand.sort(key=lambda t: (-t[0], t[1], t[2]))
            got = sorted(by_neuron[(info.name, ch)], key=lambda r: r["rank"])
            assert [r["rank"] for r in got] == list(range(n))
            assert [(r["class_id"], r["image_index"]) for r in got] == [(c, i) for _, c, i in cand[:n]]
    # layers keep model order, channels ascend
    layers = merged.column("layer").to_pylist()
    assert list(dict.fromkeys(layers)) == digits.layer_names


def test_merge_topk_ties_are_deterministic():
    def t(rows):
        cols = {k: [r[i] for r in rows] for i, k in enumerate(TOPK_SCHEMA.names)}
        return pa.Table.from_pydict(cols, schema=TOPK_SCHEMA)

    a = t([("L", 0, 0, 5, 3, 1.0, 0, 0), ("L", 0, 1, 5, 1, 1.0, 1, 1), ("L", 1, 0, 5, 0, 0.5, 0, 0)])
    b = t([("L", 0, 0, 2, 7, 1.0, 2, 2), ("L", 0, 1, 2, 9, 2.0, 3, 3), ("L", 1, 0, 2, 4, 0.5, 0, 0)])
    for order in ([a, b], [b, a]):
        m = merge_topk(order, 3)
        assert m.to_pylist() == [
            dict(layer="L", channel=0, rank=0, class_id=2, image_index=9, activation=2.0, y=3, x=3),
            dict(layer="L", channel=0, rank=1, class_id=2, image_index=7, activation=1.0, y=2, x=2),
            dict(layer="L", channel=0, rank=2, class_id=5, image_index=1, activation=1.0, y=1, x=1),
            dict(layer="L", channel=1, rank=0, class_id=2, image_index=4, activation=0.5, y=0, x=0),
            dict(layer="L", channel=1, rank=1, class_id=5, image_index=0, activation=0.5, y=0, x=0),
        ]
    assert merge_topk([], 3).num_rows == 0


class _TinyNet(nn.Module):
    """stem 3x3 -> inception (torchvision's: its "5x5" branch is 3x3) -> maxpool 2 -> inception."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.stem = BasicConv2d(channels, 8, kernel_size=3, padding=1)
        self.m1 = Inception(8, 4, 4, 6, 2, 4, 2)
        self.pool = nn.MaxPool2d(2, 2)
        self.m2 = Inception(16, 4, 4, 6, 2, 4, 2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.m2(self.pool(self.m1(self.stem(x)))).mean((2, 3)))


def tiny_adapter(size: int = 32, channels: int = 1) -> ModelAdapter:
    """A random-weight two-block adapter (any input size: global average pool before the head)."""
    torch.manual_seed(0)
    net = _TinyNet(channels).eval()
    layers = [LayerInfo("m1", 16, (4, 6, 4, 2), (4, 2)), LayerInfo("m2", 16, (4, 6, 4, 2), (4, 2))]
    return ModelAdapter(
        "tiny",
        net,
        [net.m1, net.m2],
        layers,
        [nn.Identity(), net.pool],
        ["a", "b", "c"],
        ["a", "b", "c"],
        (channels, size, size),
        "test",
        lambda im: None,
    )


def test_receptive_fields_match_the_analytic_values():
    rf = receptive_fields(tiny_adapter(32))
    # m1: stem 3x3 (3) + 3x3 branch or 3x3 max-pool branch (+2) = 5, stride 1, centred on (y, x)
    assert rf["m1"] == ReceptiveField(5, 5, 1.0, 1.0, 0.0, 0.0)
    # m2: maxpool 2/2 (5 + 1 = 6, jump 2) + 3x3 at jump 2 (+4) = 10; position y covers input rows 2y, 2y+1
    assert rf["m2"] == ReceptiveField(10, 10, 2.0, 2.0, 0.5, 0.5)


def test_receptive_fields_digits(digits):
    rf = receptive_fields(digits)
    # stem 3x3 + 5x5 branch = 7; mixed3b adds a 5x5: 11 (both exact: the far edges lie inside 8x8)
    assert rf["mixed3a"] == ReceptiveField(7, 7, 1.0, 1.0, 0.0, 0.0)
    assert rf["mixed3b"] == ReceptiveField(11, 11, 1.0, 1.0, 0.0, 0.0)
    # after the 2x2 pool the fields exceed the digit: a lower bound, still at least the whole image
    for name in ("mixed4a", "mixed4b"):
        assert rf[name].jump_y == rf[name].jump_x == 2.0
        assert min(rf[name].size_y, rf[name].size_x) >= 8


def test_crop_box_centres_and_shifts_inside():
    rf = ReceptiveField(10, 10, 2.0, 2.0, 0.5, 0.5)
    assert crop_box(rf, 8, 8, 32, 32) == (12, 12, 10, 10)  # centre 16.5 -> rows 12..21
    assert crop_box(rf, 0, 15, 32, 32) == (0, 22, 10, 10)  # shifted inside at both borders
    big = ReceptiveField(50, 50, 8.0, 8.0, 3.5, 3.5)
    assert crop_box(big, 2, 2, 32, 32) == (0, 0, 32, 32)  # larger than the image: the whole image
    # the argmax pixel's own field centre always lies inside the window
    for y in range(16):
        top, left, h, w = crop_box(rf, y, y, 32, 32)
        assert top <= 0.5 + 2 * y <= top + h - 1


def test_png_roundtrip_and_display_size():
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(1, 8, 8, generator=g)
    back = from_png(to_png(grey, 64, 128))
    assert back.shape == (1, 64, 64)  # nearest upscale x8
    assert torch.allclose(back[:, ::8, ::8], grey, atol=0.5 / 255 + 1e-6)
    rgb = torch.rand(3, 20, 30, generator=g)
    back = from_png(to_png(rgb, 16, 128))
    assert back.shape == (3, 20, 30)
    assert torch.allclose(back, rgb, atol=0.5 / 255 + 1e-6)
    assert display_size(224, 112, 64, 128) == (128, 64, "lanczos")
    assert display_size(7, 7, 64, 128) == (70, 70, "nearest")
    with pytest.raises(ValueError):
        to_png(torch.rand(2, 4, 4))
