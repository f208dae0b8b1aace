"""Checkpoints as state dicts: parsed from bytes, or read from a local file.

The engine reads no URLs: a weights URL (s3://, memory://, gs://, ...) is fetched by the run layer
(``bluff_ray.run.models.load_model``, through the results store's one fsspec opener with its
timeouts and retries) and handed in as a state dict. Files are parsed with
``torch.load(weights_only=True)``: a state dict is plain tensors, and refusing pickled code is the
safe default for files fetched from a bucket.
"""

from __future__ import annotations

import io
import os

import torch


def state_dict_from_bytes(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` saved with ``torch.save`` in ``data`` (``source`` names it in errors).

    Raises ValueError if the bytes are not a state dict of tensors.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{source} is not a torch state_dict file readable with weights_only=True: {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common training-checkpoint wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state_dict (a dict of tensors)")
    return obj


def is_url(weights: str) -> bool:
    """True for a URL the run layer must fetch (anything with a scheme except a local ``file://``)."""
    return "://" in str(weights) and not str(weights).startswith("file://")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` from a local file (a path or ``file://`` URL).

    Raises FileNotFoundError (naming the path) if nothing is there, ValueError for a remote URL
    (load those with ``bluff_ray.run.models.load_model``) or a file that is not a state dict.
    """
    path = os.fspath(path)
    if is_url(path):
        raise ValueError(
            f"{path}: the engine reads local weights files only; load remote weights with "
            "bluff_ray.run.models.load_model (or pass the state dict)"
        )
    local = path.removeprefix("file://")
    try:
        with open(local, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"weights file not found: {path}") from None
    return state_dict_from_bytes(data, path)


def state_dict_of(weights: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """``weights`` as a state dict: given as one, or read from a local file."""
    return weights if isinstance(weights, dict) else read_state_dict(weights)
