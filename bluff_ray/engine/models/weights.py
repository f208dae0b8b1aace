"""Reading checkpoints from a local path or any fsspec URL (s3://, memory://, file://, gs://, ...).

One reader for every model so that weights kept next to the results (e.g. on S3) work the same
as a local file. Files are read whole and parsed with ``torch.load(weights_only=True)``: a state
dict is plain tensors, and refusing pickled code is the safe default for files fetched from a
bucket.
"""

from __future__ import annotations

import io

import fsspec
import torch


def read_state_dict(url: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` saved with ``torch.save`` from ``url`` (a path or fsspec URL).

    Raises FileNotFoundError (naming the URL) if nothing is there, and ValueError if the file is
    not a state dict of tensors.
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"weights file not found: {url}") from e
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for bad/unsafe files
        raise ValueError(f"{url} is not a torch state_dict file readable with weights_only=True: {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common training-checkpoint wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{url} does not hold a state_dict (a dict of tensors)")
    return obj
