"""Checkpoints as one safetensors file, written atomically.

Tensors (model, optimiser state, RNG states) are stored by name; everything else (epoch, config,
the optimiser's non-tensor state, scheduler state) goes into the file's JSON metadata, where
tensors inside nested structures are replaced by ``{"__tensor__": name}`` references.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from .errors import CheckpointError

FORMAT_VERSION = 1


def pack(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Move the tensors of a nested structure into ``tensors``; return a JSON-able skeleton."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        # pairs keep non-string keys (the optimiser's integer parameter ids) intact through JSON
        return {"__pairs__": [[k, pack(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [pack(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unpack(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__pairs__" in skeleton:
        return {k: unpack(v, tensors) for k, v in skeleton["__pairs__"]}
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    return skeleton


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a nested ``state`` (tensors anywhere inside) to ``path`` atomically."""
    tensors: dict[str, Tensor] = {}
    skeleton = pack(state, "state", tensors)
    metadata = {"capsmm": json.dumps({"format": FORMAT_VERSION, "state": skeleton})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote; an unreadable file is a :class:`CheckpointError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        payload = json.loads(metadata["capsmm"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "delete it to start over, or point --out at another run"
        ) from None
    if payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {payload.get('format')}, this capsmm reads {FORMAT_VERSION}")
    return unpack(payload["state"], tensors)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
