"""Loading a run's model: ``engine.models.load_model``, with weights URLs fetched here.

Why in the run layer: the engine reads no URLs. A weights file on S3 (or any fsspec URL) is read
through the results store's one opener (``results.store.read_url``), with the same timeouts and
retries as the results and the images, and handed to the engine as a state dict.
"""

from __future__ import annotations

import os

from bluff_ray.engine.models import load_model as _engine_load_model
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.models.weights import is_url, state_dict_from_bytes
from bluff_ray.results.store import read_url, redact_url


def load_model(
    name: str,
    weights: str | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    storage_options: dict | None = None,
) -> ModelAdapter:
    """Load a model by name, in eval mode, on ``device`` (``engine.models.load_model``'s arguments).

    ``weights`` may also be an fsspec URL (``s3://bucket/googlenet.pth``, ``memory://...``), read
    with ``storage_options``; the adapter's ``metadata["weights"]`` is that URL.
    """
    if not (isinstance(weights, str) and is_url(weights)):
        return _engine_load_model(name, weights=weights, cache_dir=cache_dir, device=device)
    try:
        data = read_url(weights, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {redact_url(weights)}. {_weights_help(name)}") from None
    state = state_dict_from_bytes(data, redact_url(weights))
    return _engine_load_model(name, weights=state, cache_dir=cache_dir, device=device, weights_source=weights)


def _weights_help(name: str) -> str:
    if name == "googlenet":
        from bluff_ray.engine.models.googlenet import weights_help

        return weights_help()
    return "weights must be a torch state_dict file: a local path or an fsspec URL (s3://..., file://...)"
