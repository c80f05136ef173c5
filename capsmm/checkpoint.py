"""Checkpoints as one safetensors file, streamed to disk, verified when read.

Tensors (model, optimiser state, RNG states) are stored by name; everything else (epoch, config,
the optimiser's non-tensor state, scheduler state) goes into the file's JSON metadata, where
tensors inside nested structures are replaced by ``{"__tensor__": name}`` references. The metadata
also holds a SHA-256 of all of it, so a truncated or corrupted file is refused, never half-loaded.

Writes are atomic: the file is written to a temporary name beside the target (``.capsmm-tmp-*``),
fsynced, renamed over the target, and the folder fsynced, so a crash at any moment leaves the old
checkpoint or the new one. A killed writer may leave its temporary file behind;
:func:`remove_stale_temporaries` clears them when a run starts or resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import CheckpointError

#: 2 adds the SHA-256; files of format 1 (no hash) still load
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
TEMPORARY_PREFIX = ".capsmm-tmp-"


def _name_part(key: Any) -> str:
    """A key as one part of a tensor's name, its separators escaped: ``.`` -> ``\\.``, ``\\`` -> ``\\\\``.

    Why: names join keys with ``.``, so ``{"a.b": t}`` and ``{"a": {"b": t}}`` would both be
    ``a.b`` and one tensor would overwrite the other; escaped, distinct string keys give distinct names.
    """
    return str(key).replace("\\", "\\\\").replace(".", "\\.")


def pack(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Move the tensors of a nested structure into ``tensors`` (on the CPU, contiguous, one storage
    each: copied only when they are not so already); return a JSON-able skeleton.

    Each tensor is named by its path of keys (:func:`_name_part`); keys that still print alike in
    one dict (``1`` and ``"1"``) are a :class:`CheckpointError`, never a silent overwrite."""
    if isinstance(obj, Tensor):
        if prefix in tensors:
            raise CheckpointError(f"two tensors of the checkpoint are both named {prefix!r} (keys that print alike, "
                                  f"such as 1 and '1'); give them distinct keys")
        tensor = obj.to("cpu").contiguous()
        if any(t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() for t in tensors.values() if t.numel()):
            tensor = tensor.clone()  # safetensors stores every tensor in storage of its own
        tensors[prefix] = tensor
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        # pairs keep non-string keys (the optimiser's integer parameter ids) intact through JSON
        return {"__pairs__": [[k, pack(v, f"{prefix}.{_name_part(k)}", tensors)] for k, v in obj.items()]}
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


def digest(tensors: dict[str, Tensor], payload: str) -> str:
    """SHA-256 of the JSON payload and of every tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256(payload.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        sha.update(tensor.view(-1).view(torch.uint8).numpy().data)
    return sha.hexdigest()


def _user_file_mode() -> int:
    """The mode a new file gets under the user's umask (temporary files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that can't open a folder (Windows) have no folder entry to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary path)``, then fsync it and rename it over ``path``: a crash leaves either
    the old file or the new one, never half. The file gets the user's umask, like any new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _user_file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder``; returns them."""
    stale = sorted(Path(folder).glob(f"{TEMPORARY_PREFIX}*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a nested ``state`` (tensors anywhere inside) to ``path``, streamed and atomic."""
    tensors: dict[str, Tensor] = {}
    payload = json.dumps({"format": FORMAT_VERSION, "state": pack(state, "state", tensors)})
    metadata = {"capsmm": payload, "sha256": digest(tensors, payload)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote; an unreadable or corrupted file is a :class:`CheckpointError`."""
    advice = "delete it to start over, or point --out at another run"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        payload = json.loads(metadata["capsmm"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}); {advice}") from None
    if payload.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"checkpoint {path} has format {payload.get('format')}, this capsmm reads {READABLE_FORMATS}")
    if payload["format"] >= 2 and digest(tensors, metadata["capsmm"]) != metadata.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted (its contents do not match the SHA-256 stored in it); {advice}")
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
