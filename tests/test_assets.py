"""Neuron assets written through a real Store: files, contents, index, resume."""

from __future__ import annotations

import io
import os

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bluff_ray.engine.patches import class_topk, from_png, merge_topk
from bluff_ray.results.store import Store
from bluff_ray.run.assets import (
    INDEX_PATH,
    INDEX_SCHEMA,
    AssetConfig,
    feature_vis_path,
    patch_path,
    render_neuron_assets,
    select_neurons,
    write_index,
)
from bluff_ray.run.data import DigitsSource

NEURONS = [("mixed3a", 3), ("mixed4b", 20)]
CFG = AssetConfig(n_patches=3, fv_steps=16)


class CountingStore(Store):
    """A real Store that counts PUTs (write_bytes calls) per path."""

    def __init__(self, url):
        super().__init__(url)
        self.puts: list[str] = []

    def write_bytes(self, rel, data):
        self.puts.append(rel)
        super().write_bytes(rel, data)


@pytest.fixture(scope="module")
def source():
    return DigitsSource("test")


@pytest.fixture(scope="module")
def topk(digits, source):
    return merge_topk([class_topk(digits, source.class_images(c, 10)[0], c, 3) for c in (0, 1)], 3)


def decode(store, rel) -> Image.Image:
    im = Image.open(io.BytesIO(store.read_bytes(rel)))
    im.load()
    assert im.format == "PNG"
    return im


def test_assets_written_decodable_indexed_and_cropped_at_argmax(tmp_path, digits, source, topk):
    store = CountingStore(str(tmp_path / "root"))
    table = render_neuron_assets(digits, store, NEURONS, topk, source, CFG)
    assert table.schema == INDEX_SCHEMA
    rows = table.to_pylist()
    fv = [r for r in rows if r["kind"] == "feature_vis"]
    patches = [r for r in rows if r["kind"] == "patch"]
    assert [(r["layer"], r["channel"]) for r in fv] == NEURONS
    expected_patches = [r for r in topk.to_pylist() if (r["layer"], r["channel"]) in NEURONS and r["activation"] > 0]
    assert len(patches) == len(expected_patches) > 0
    # one PUT per file, and every file of the index exists and decodes
    assert sorted(store.puts) == sorted(r["path"] for r in rows)
    for r in rows:
        assert store.exists(r["path"])
        im = decode(store, r["path"])
        assert im.mode == "L"

    # feature vis: 8x8 upscaled x8; its activation is the channel max on the stored picture
    for r in fv:
        assert r["path"] == feature_vis_path(r["layer"], r["channel"])
        img = from_png(store.read_bytes(r["path"]))
        assert img.shape == (1, 64, 64)
        with torch.no_grad():
            _, acts = digits.forward_with_activations(img[None, :, ::8, ::8])
        assert r["activation"] == pytest.approx(acts[r["layer"]][0, r["channel"]].max().item(), abs=1e-5)

    # patches: the window around the argmax of the source image, computed here directly
    for r in patches:
        assert r["path"] == patch_path(r["layer"], r["channel"], r["rank"])
        image = source.class_images(r["class_id"], None)[0][r["image_index"]]
        with torch.no_grad():
            _, acts = digits.forward_with_activations(image[None])
        fmap = acts[r["layer"]][0, r["channel"]]
        assert r["activation"] == pytest.approx(fmap.max().item(), rel=1e-4, abs=1e-5)
        y, x = divmod(int(torch.argmax(fmap.flatten())), fmap.shape[1])
        if r["layer"] == "mixed3a":  # stem 3x3 + 5x5 branch: a 7x7 field centred on (y, x), stride 1
            top, left = min(max(y - 3, 0), 1), min(max(x - 3, 0), 1)
            want = image[:, top : top + 7, left : left + 7]
            factor = 10  # 7 px -> 70 px (nearest, at least 64)
        else:  # mixed4b sees the whole 8x8 digit
            want, factor = image, 8
        got = from_png(store.read_bytes(r["path"]))
        assert got.shape[1:] == (want.shape[1] * factor, want.shape[2] * factor)
        assert torch.allclose(got[:, ::factor, ::factor], want, atol=0.5 / 255 + 1e-6)

    # index: written once, read back equal (sorted), schema as FORMAT.md
    write_index(store, [table.slice(0, 3), table.slice(3)])  # shards from several actors
    index = pq.read_table(os.path.join(store.root, INDEX_PATH))
    assert index.schema.remove_metadata() == INDEX_SCHEMA
    assert sorted(index.to_pylist(), key=lambda r: r["path"]) == sorted(rows, key=lambda r: r["path"])
    keys = [(r["layer"], r["channel"], r["kind"], r["rank"]) for r in index.to_pylist()]
    assert keys == sorted(keys)


def test_rerun_skips_existing_files(tmp_path, digits, source, topk):
    """Only missing files are rendered again, and a re-rendered visualisation is the same picture.
    In float64: in float32 the re-render (a batch of one) rounds differently from the first
    render (a batch of two), and the optimisation amplifies that."""
    import copy

    from bluff_ray.engine.models.digits import digits_adapter

    digits = digits_adapter(copy.deepcopy(digits.model).double())
    store = CountingStore(str(tmp_path / "root"))
    first = render_neuron_assets(digits, store, NEURONS, topk, source, CFG)
    mtimes = {r: os.stat(os.path.join(store.root, r)).st_mtime_ns for r in store.puts}
    store.puts.clear()
    again = render_neuron_assets(digits, store, NEURONS, topk, source, CFG)
    assert store.puts == []  # nothing re-rendered or re-written
    assert again.equals(first)
    assert all(os.stat(os.path.join(store.root, r)).st_mtime_ns == t for r, t in mtimes.items())
    # a missing file (an interrupted shard) is the only one written on the next run
    lost = next(r["path"] for r in first.to_pylist() if r["kind"] == "patch")
    os.unlink(os.path.join(store.root, lost))
    lost_fv = feature_vis_path(*NEURONS[1])
    os.unlink(os.path.join(store.root, lost_fv))
    store.puts.clear()
    third = render_neuron_assets(digits, store, NEURONS, topk, source, CFG)
    assert sorted(store.puts) == sorted([lost, lost_fv])
    assert third.equals(first)  # seeded: the re-rendered visualisation is the same picture


def test_changed_source_and_bad_input_are_refused(tmp_path, digits, source, topk):
    class Shifted:
        def class_images(self, class_id, max_images=None):
            imgs, n = source.class_images(class_id, max_images)
            return torch.roll(imgs, 1, dims=0), n  # same images, other order

    store = CountingStore(str(tmp_path / "root"))
    with pytest.raises(RuntimeError, match="changed since the run started"):
        render_neuron_assets(digits, store, [("mixed4b", 20)], topk, Shifted(), AssetConfig(n_patches=3, fv_steps=0))
    assert not any(p.startswith("neurons/patches") for p in store.puts)
    with pytest.raises(ValueError, match="unknown neuron"):
        render_neuron_assets(digits, store, [("mixed3a", 99)], topk, source, CFG)
    assert render_neuron_assets(digits, store, NEURONS, topk, source, AssetConfig(enabled=False)).num_rows == 0
    with pytest.raises(ValueError, match="duplicate"):
        t = render_neuron_assets(digits, store, NEURONS[:1], topk, source, AssetConfig(n_patches=0, fv_steps=0))
        write_index(store, [t, t])
    with pytest.raises(ValueError):
        AssetConfig(n_patches=-1)


def test_rgb_model_end_to_end(tmp_path):
    """The ImageNet path (3 channels, input larger than the PNG limit, decorrelated colour) on a tiny net."""
    from test_patches import tiny_adapter

    adapter = tiny_adapter(size=160, channels=3)
    g = torch.Generator().manual_seed(0)
    images = {c: torch.rand(4, 3, 160, 160, generator=g) for c in (0, 1)}

    class Source:
        def class_images(self, class_id, max_images=None):
            return images[class_id][:max_images], 0

    topk = merge_topk([class_topk(adapter, images[c], c, 2) for c in (0, 1)], 2)
    store = CountingStore(str(tmp_path / "root"))
    cfg = AssetConfig(n_patches=2, fv_steps=2)
    assert cfg.featurevis_config(adapter).size == 128  # capped below the 160-px input
    table = render_neuron_assets(adapter, store, [("m1", 0), ("m2", 3)], topk, Source(), cfg)
    for r in table.to_pylist():
        im = decode(store, r["path"])
        assert im.mode == "RGB"
        if r["kind"] == "feature_vis":
            assert im.size == (128, 128)
        else:  # m1: 5x5 field -> 65x65 (x13); m2: 10x10 -> 70x70 (x7)
            assert im.size == ((65, 65) if r["layer"] == "m1" else (70, 70))


def test_select_neurons(digits):
    assert select_neurons(digits, [("mixed4b", 2), ("mixed3a", 5), ("mixed4b", 2)], AssetConfig()) == [
        ("mixed3a", 5),
        ("mixed4b", 2),
    ]
    everything = select_neurons(digits, [], AssetConfig(all_neurons=True))
    assert len(everything) == sum(l.channels for l in digits.layers)
    with pytest.raises(ValueError, match="unknown layers"):
        select_neurons(digits, [("mixed9", 0)], AssetConfig())
    assert AssetConfig().featurevis_config(digits).size == 8


@pytest.mark.ray
def test_demo_results_have_assets_for_every_displayed_neuron(demo_results):
    """The pipeline's reduce rendered the displayed neurons' assets and indexed them."""
    import duckdb

    store = Store(demo_results)
    index = store.read_table(INDEX_PATH).to_pylist()
    displayed = duckdb.sql(
        f"SELECT DISTINCT layer, channel FROM read_parquet('{demo_results}/nodes/*/*.parquet', hive_partitioning=true)"
    ).fetchall()
    fv = {(r["layer"], r["channel"]) for r in index if r["kind"] == "feature_vis"}
    assert fv == set(displayed)
    for r in index:
        im = decode(store, r["path"])
        assert im.size[0] >= 64
    patches = [r for r in index if r["kind"] == "patch"]
    assert patches and all(r["activation"] > 0 and r["class_id"] in (0, 1, 2) for r in patches)
    on_disk = set(store.list("neurons/feature_vis")) | set(store.list("neurons/patches"))
    assert on_disk == {r["path"] for r in index}
