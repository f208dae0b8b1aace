"""Image sources: digits split, ImageFolder on local disk and on an fsspec memory filesystem,
corrupt files skipped and counted."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from bluff_ray.engine.models.digits import DigitsNet, digits_adapter, digits_split
from bluff_ray.run.data import CachedSource, ImageFolderSource, make_source


@pytest.fixture(scope="module")
def adapter():
    return digits_adapter(DigitsNet())  # untrained: only class ids and load_image are used


def png_bytes(img: torch.Tensor, fmt: str = "PNG") -> bytes:
    arr = (img[0].numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format=fmt)
    return buf.getvalue()


def write_folder(fs, root: str, per_class: dict[int, list[torch.Tensor]], extra: dict[str, bytes]) -> None:
    for c, imgs in per_class.items():
        for i, img in enumerate(imgs):
            fs.pipe_file(f"{root}/{c}/img{i:03d}.png", png_bytes(img))
    for rel, data in extra.items():
        fs.pipe_file(f"{root}/{rel}", data)


def test_digits_source_is_the_test_split(adapter):
    x, y = digits_split("test")
    src = make_source("digits", adapter)
    imgs, skipped = src.class_images(3)
    assert skipped == 0 and torch.equal(imgs, x[y == 3])
    imgs5, _ = src.class_images(3, 5)
    assert torch.equal(imgs5, x[y == 3][:5])


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_image_folder_reads_sorted_files_and_skips_corrupt_ones(adapter, tmp_path, protocol, caplog):
    x, y = digits_split("test")
    per_class = {1: list(x[y == 1][:4]), 7: list(x[y == 7][:3])}
    good_jpeg = png_bytes(x[y == 1][5], "JPEG")
    extra = {
        "1/img001b.jpg": good_jpeg[: len(good_jpeg) // 2],  # truncated JPEG
        "1/img002b.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",  # corrupt header
        "1/notes.txt": b"ignored: not an image extension",
        "unknown-class/img.png": png_bytes(x[0]),
    }
    if protocol == "file":
        fs, root = fsspec.filesystem("file", auto_mkdir=True), str(tmp_path / "folder")
        url = root
    else:
        fs, root = fsspec.filesystem("memory"), f"/bluff-test-{tmp_path.name}"
        url = f"memory://{root}"
    write_folder(fs, root, per_class, extra)

    src = ImageFolderSource(url, adapter)
    imgs, skipped = src.class_images(1)
    assert skipped == 2
    assert sorted(src.skipped_files[1]) == ["img001b.jpg", "img002b.jpg"]
    assert "skipping unreadable image img001b.jpg" in caplog.text
    expected = torch.stack(per_class[1])
    assert imgs.shape == (4, 1, 8, 8)
    assert torch.allclose(imgs, expected, atol=0.5 / 255 + 1e-6)  # PNG keeps 8 bits

    # sorted: img000, img001, img001b (bad), img002, img002b (bad), img003
    capped, skipped_capped = src.class_images(1, max_images=3)
    assert capped.shape[0] == 3 and skipped_capped == 1  # stops reading once it has 3 good images
    assert torch.allclose(capped, expected[:3], atol=0.5 / 255 + 1e-6)
    imgs7, s7 = src.class_images(7)
    assert imgs7.shape[0] == 3 and s7 == 0
    empty, s0 = src.class_images(2)  # no folder: no images, not an error
    assert empty.shape == (0, 1, 8, 8) and s0 == 0


def test_cached_source_reads_each_class_once():
    calls = []

    class Counting:
        def class_images(self, c, m=None):
            calls.append(c)
            return torch.zeros(2, 1, 8, 8), 0

    src = CachedSource(Counting(), max_bytes=2 * 2 * 64 * 4)  # room for two classes
    for c in (0, 1, 0, 1, 2, 0):
        src.class_images(c)
    assert calls == [0, 1, 2, 0]  # 0 was evicted by 2 (least recently used)


def test_synthetic_images_are_deterministic_8_bit_and_differ_by_class():
    from bluff_ray.run.data import SyntheticSource

    src = SyntheticSource((3, 8, 8), per_class=4)
    a, n = src.class_images(5)
    b, _ = SyntheticSource((3, 8, 8), per_class=4).class_images(5, 2)
    assert a.shape == (4, 3, 8, 8) and n == 0 and torch.equal(a[:2], b)
    assert torch.equal(torch.round(a * 255) / 255, a) and a.min() >= 0 and a.max() <= 1
    c, _ = src.class_images(6)
    assert (a.mean(0) - c.mean(0)).abs().max() > 0.1


def test_node_cache_reads_each_class_once_and_notices_a_changed_folder(tmp_path):
    import threading

    from PIL import Image

    from bluff_ray.engine.models import load_model
    from bluff_ray.run.data import CachedSource, ImageFolderSource, NodeCache

    adapter = load_model("digits")
    folder = tmp_path / "images" / "3"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    reads: list[str] = []

    class Counting(ImageFolderSource):
        def class_images(self, class_id, max_images=None):
            reads.append(class_id)
            return super().class_images(class_id, max_images)

    src = Counting(str(tmp_path / "images"), adapter)
    direct, _ = src.class_images(3)
    reads.clear()
    caches = [CachedSource(NodeCache(src, str(tmp_path / "cache"), "k")) for _ in range(2)]  # two actors
    got = []
    threads = [threading.Thread(target=lambda c=c: got.append(c.class_images(3)[0])) for c in caches for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == [3]  # decoded once for the node, whatever the actors and threads
    assert all(torch.equal(g, direct) for g in got)  # uint8 storage is lossless for 8-bit images
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / "3.png")  # the folder changed
    again, _ = NodeCache(src, str(tmp_path / "cache"), "k").class_images(3)
    assert reads == [3, 3] and again.shape[0] == 4
