"""Image sources: the images of one class, as a float tensor in the model's [0, 1] input space.

``class_images(class_id, max_images) -> (images [N,C,H,W], n_skipped)`` is all the pipeline needs.
Order is deterministic (the dataset order, or sorted file names), because dataset examples refer to
images by their index within the class.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections import OrderedDict
from typing import Protocol

import fsspec
import torch
from PIL import Image, UnidentifiedImageError

from .config import redact_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageSource(Protocol):
    def class_images(self, class_id: int, max_images: int | None) -> tuple[torch.Tensor, int]: ...


class DigitsSource:
    """scikit-learn's digits, one split of H1's deterministic 70/30 split (the test split by default:
    the demo net never saw those images in training)."""

    def __init__(self, split: str = "test", seed: int = 0):
        from .models.digits import digits_split

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
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.class_ids = list(adapter.class_ids)
        self.load_image = adapter.load_image
        self.input_shape = tuple(adapter.input_shape)
        self.skipped_files: dict[int, list[str]] = {}

    def __reduce__(self):  # not picklable by design: build it inside the actor
        raise TypeError("ImageFolderSource holds an open filesystem; create it where it is used")

    def folder(self, class_id: int) -> str:
        return f"{self.root}/{self.class_ids[int(class_id)]}"

    def files(self, class_id: int) -> list[str]:
        folder = self.folder(class_id)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            log.warning("no folder for class %s (%s) under %s", class_id, self.class_ids[class_id], redact_url(self.url))
            return []
        return sorted(p for p in names if p.lower().endswith(IMAGE_EXTENSIONS))

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
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                skipped.append(posixpath.basename(path))
                log.warning("skipping unreadable image %s: %s", posixpath.basename(path), e)
        self.skipped_files[int(class_id)] = skipped
        images = torch.stack(good) if good else torch.empty(0, *self.input_shape)
        return images, len(skipped)


class CachedSource:
    """Keeps recently used classes in memory (a work unit needs its targets' benign images, and
    neighbouring units need the same ones); bounded by ``max_bytes``."""

    def __init__(self, source: ImageSource, max_bytes: int = 2 * 2**30):
        self.source = source
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[int, int | None], tuple[torch.Tensor, int]] = OrderedDict()
        self._bytes = 0

    def class_images(self, class_id: int, max_images: int | None = None) -> tuple[torch.Tensor, int]:
        key = (int(class_id), max_images)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = self.source.class_images(class_id, max_images)
        size = value[0].numel() * value[0].element_size()
        if size <= self.max_bytes:
            self._cache[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (old, _) = self._cache.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
        return value


def make_source(spec: str, adapter, storage_options: dict | None = None) -> ImageSource:
    """``"digits"`` -> DigitsSource (test split); anything else is an ImageFolder URL."""
    if spec == "digits":
        if adapter.name != "digits":
            raise ValueError(f"data 'digits' only fits the digits model, not {adapter.name}")
        return DigitsSource("test")
    return ImageFolderSource(spec, adapter, storage_options)
