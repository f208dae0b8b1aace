"""Image sources: the images of one class, as a float tensor in the model's [0, 1] input space.

``class_images(class_id, max_images) -> (images [N,C,H,W], n_skipped)`` is all the pipeline needs.
Order is deterministic (the dataset order, or sorted file names), because dataset examples refer to
images by their index within the class.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bluff_ray.engine.models.rehearsal import synthetic_pattern
from bluff_ray.localfile import atomic_write
from bluff_ray.results.store import open_url, redact_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageSource(Protocol):
    def class_images(self, class_id: int, max_images: int | None) -> tuple[torch.Tensor, int]: ...


class DigitsSource:
    """scikit-learn's digits, one split of the deterministic 70/30 split (the test split by default:
    the demo net never saw those images in training)."""

    def __init__(self, split: str = "test", seed: int = 0):
        from bluff_ray.engine.models.digits import digits_split

        self.images, self.labels = digits_split(split, seed)

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        imgs = self.images[self.labels == int(class_id)]
        if max_images is not None:
            imgs = imgs[:max_images]
        return imgs.clone(), 0


class ImageFolderSource:
    """``<url>/<wnid or class id>/<image files>`` on any fsspec filesystem.

    The folder of class c is named ``adapter.class_ids[c]`` (an ImageNet wnid, or "3" for digits).
    Files are read in sorted name order; a file that cannot be decoded (corrupt, truncated, not an
    image) is skipped, counted in ``n_skipped`` and logged by name, and the next file is used, so a
    few bad files never stop a run.
    """

    def __init__(self, url: str, adapter, storage_options: dict | None = None):
        self.url = str(url).rstrip("/")
        self.fs, self.root = open_url(self.url, storage_options)  # the store's timeouts and retries
        self.root = self.root.rstrip("/")
        self.class_ids = list(adapter.class_ids)
        self.load_image = adapter.load_image
        self.input_shape = tuple(adapter.input_shape)
        self.skipped_files: dict[int, list[str]] = {}

    def __reduce__(self):  # not picklable by design: build it inside the actor
        raise TypeError("ImageFolderSource holds an open filesystem; create it where it is used")

    def folder(self, class_id: int) -> str:
        return f"{self.root}/{self.class_ids[int(class_id)]}"

    def _entries(self, class_id: int) -> list[dict]:
        folder = self.folder(class_id)
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            log.warning(
                "no folder for class %s (%s) under %s", class_id, self.class_ids[class_id], redact_url(self.url)
            )
            return []
        return sorted(
            (e for e in entries if str(e["name"]).lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e["name"]
        )

    def files(self, class_id: int) -> list[str]:
        return [e["name"] for e in self._entries(class_id)]

    def listing(self, class_id: int) -> list[list]:
        """[name, size] of the class's image files: what a cached copy must still match."""
        return [[posixpath.basename(str(e["name"])), int(e.get("size") or 0)] for e in self._entries(class_id)]

    def decode(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force the full decode: truncated files fail here, not later
            x = self.load_image(img)
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"loader gave shape {tuple(x.shape)}, expected {self.input_shape}")
        return x

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        good: list[torch.Tensor] = []
        skipped: list[str] = []
        for path in self.files(class_id):
            if max_images is not None and len(good) >= max_images:
                break
            try:
                good.append(self.decode(self.fs.cat_file(path)))
            except (
                OSError,
                UnidentifiedImageError,
                ValueError,
                SyntaxError,
                EOFError,
                Image.DecompressionBombError,
            ) as e:  # one bad file must not stop the class
                skipped.append(posixpath.basename(path))
                log.warning("skipping unreadable image %s: %s", posixpath.basename(path), e)
        self.skipped_files[int(class_id)] = skipped
        images = torch.stack(good) if good else torch.empty(0, *self.input_shape)
        return images, len(skipped)


class SyntheticSource:
    """Deterministic synthetic images for any model: the rehearsal's (and the benchmarks') data.

    Image i of class c is the class's :func:`synthetic_pattern` plus 10 % seeded per-image noise,
    quantised to 8 bits so it survives the uint8 node cache exactly. ``per_class`` images per class
    (``images_per_class`` caps it).
    """

    NOISE = 0.1

    def __init__(self, input_shape: tuple[int, int, int], seed: int = 0, per_class: int = 8):
        c, h, w = (int(v) for v in input_shape)
        self.input_shape = (c, h, w)
        self.seed, self.per_class = int(seed), int(per_class)

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        n = self.per_class if max_images is None else min(self.per_class, int(max_images))
        base = synthetic_pattern(class_id, self.input_shape, self.seed)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(class_id)) ^ 0x5EED)
        noise = torch.rand(n, *self.input_shape, generator=g)
        x = ((1 - self.NOISE) * base + self.NOISE * noise).clamp(0, 1)
        return torch.round(x * 255) / 255, 0


def _to_uint8(x: torch.Tensor) -> np.ndarray | None:
    """Images in [0,1] as uint8 when that is lossless (8-bit decoders), else None."""
    q = torch.round(x * 255)
    if x.numel() and float((q / 255 - x).abs().max()) > 1e-6:
        return None
    return q.to(torch.uint8).numpy()


class NodeCache:
    """Decoded class images in a folder on the node's local disk, shared by every actor there.

    Why: a work unit needs its original's and its targets' images, and with 1,000 classes a
    per-actor memory cache misses most of them, so each class would be fetched and decoded again
    and again. Here the first actor on a node that needs a class reads and decodes it once (a file
    lock keeps the other actors waiting instead of reading too), stores uint8 arrays, and every
    later request on that node is a local read. The cache key names the image source, the model's
    loader and the image cap; a class's entry also records its file listing (names and sizes), so
    a changed folder is read again.
    """

    def __init__(self, source: ImageFolderSource, folder: str, key: str):
        self.source = source
        self.folder = os.path.join(folder, key)
        os.makedirs(self.folder, exist_ok=True)

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        import fcntl
        import json

        stem = os.path.join(self.folder, f"{int(class_id)}-{max_images if max_images is not None else 'all'}")
        listing = self.source.listing(class_id)
        with open(stem + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.path.exists(stem + ".json") and os.path.exists(stem + ".npy"):
                    with open(stem + ".json") as f:
                        meta = json.load(f)
                    if meta.get("listing") == listing:
                        arr = np.load(stem + ".npy")
                        x = torch.from_numpy(arr)
                        x = x.float() / 255 if arr.dtype == np.uint8 else x.float()
                        self.source.skipped_files[int(class_id)] = list(meta.get("skipped", []))
                        return x, int(meta["n_skipped"])
                x, n_skipped = self.source.class_images(class_id, max_images)
                arr = _to_uint8(x)
                buf = io.BytesIO()
                np.save(buf, arr if arr is not None else x.numpy())
                atomic_write(stem + ".npy", buf.getvalue())
                atomic_write(
                    stem + ".json",
                    json.dumps(
                        {
                            "n_skipped": n_skipped,
                            "listing": listing,
                            "skipped": self.source.skipped_files.get(int(class_id), []),
                        }
                    ).encode(),
                )
                return x, n_skipped
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class CachedSource:
    """Keeps recently used classes in memory, bounded by ``max_bytes``; thread-safe, and a class
    requested while another thread loads it waits for that load instead of loading it again (the
    actor reads the next unit's classes while it computes the current one)."""

    def __init__(self, source: ImageSource, max_bytes: int = 2 * 2**30):
        self.source = source
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[int, int | None], tuple[torch.Tensor, int]] = OrderedDict()
        self._loading: dict[tuple[int, int | None], Future] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        key = (int(class_id), max_images)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            fut = self._loading.get(key)
            mine = fut is None
            if fut is None:
                fut = self._loading[key] = Future()
        if not mine:
            return fut.result()
        try:
            value = self.source.class_images(class_id, max_images)
        except BaseException as e:
            with self._lock:
                self._loading.pop(key, None)
            fut.set_exception(e)
            raise
        size = value[0].numel() * value[0].element_size()
        with self._lock:
            self._loading.pop(key, None)
            if size <= self.max_bytes:
                self._cache[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (old, _) = self._cache.popitem(last=False)
                    self._bytes -= old.numel() * old.element_size()
        fut.set_result(value)
        return value


def source_key(spec: str, adapter, max_images: int | None) -> str:
    """Names a node cache: the image source URL (without credentials), the model's input and cap."""
    blob = f"{redact_url(spec)}|{adapter.name}|{tuple(adapter.input_shape)}|{max_images}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_node_cache() -> str:
    return os.environ.get("BLUFF_NODE_CACHE") or os.path.join(tempfile.gettempdir(), "bluff-node-cache")


def make_source(
    spec: str,
    adapter,
    storage_options: dict | None = None,
    node_cache: str | None = None,
    max_images: int | None = None,
) -> ImageSource:
    """``"digits"`` (test split), ``"synthetic"`` (:class:`SyntheticSource`) or an ImageFolder URL
    (behind a :class:`NodeCache` in ``node_cache``, default $BLUFF_NODE_CACHE or the temp dir)."""
    check_source(spec, adapter)
    if spec == "digits":
        return DigitsSource("test")
    if spec == "synthetic":  # the data do not change with the run's seed (the rehearsal model is fitted to them)
        return SyntheticSource(adapter.input_shape, per_class=max_images or SYNTHETIC_PER_CLASS)
    folder = ImageFolderSource(spec, adapter, storage_options)
    return NodeCache(folder, node_cache or default_node_cache(), source_key(spec, adapter, max_images))


SYNTHETIC_PER_CLASS = 8


def check_source(spec: str, adapter) -> None:
    """Refuse an image source that cannot fit the model (checked in the driver, before any actor)."""
    if spec == "digits" and adapter.name != "digits":
        raise ValueError(
            f"data 'digits' (8x8 grey digits) only fits the digits model, not {adapter.name}: "
            "use an image folder URL or 'synthetic'"
        )
