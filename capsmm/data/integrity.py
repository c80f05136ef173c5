"""Verify a data file's MD5 once, and again only when the file changes.

torchvision checks the MD5 of every CIFAR batch before unpickling it, because unpickling runs
code: a batch replaced in a shared data folder would run in every training process that reads it.
Hashing 180 MB on every start costs seconds, so capsmm remembers each verified file's size and
modification time, with its MD5, in ``$CAPSMM_CACHE`` (default ``~/.cache/capsmm``)
``/verified-files.json``, and hashes it again whenever either changes. The record lives in the
user's cache rather than beside the file because shared data folders are often read-only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torchvision.datasets.utils import check_integrity

from ..checkpoint import atomic_write_json

RECORD = "verified-files.json"


def cache_folder() -> Path:
    configured = os.environ.get("CAPSMM_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capsmm"


def _records() -> dict[str, Any]:
    try:
        return json.loads((cache_folder() / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def verified(path: Path, md5: str | None) -> bool:
    """Whether ``path`` has the MD5 ``md5`` (always True for ``md5`` None, as torchvision has it),
    hashing it only if it changed since it was last verified."""
    if md5 is None:
        return Path(path).is_file()
    try:
        stat = Path(path).stat()
    except OSError:
        return False
    key, stamp = str(Path(path).resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}
    records = _records()
    if records.get(key) == stamp:
        return True
    if not check_integrity(str(path), md5):
        return False
    records[key] = stamp
    try:
        atomic_write_json(cache_folder() / RECORD, records)
    except OSError:  # no writable cache: verify again next time
        pass
    return True


class VerifiedOnce:
    """Mixin for torchvision's CIFAR classes: their MD5 checks, each file hashed once (module docstring)."""

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]

    def _check_integrity(self) -> bool:
        return all(verified(Path(self.root) / self.base_folder / name, md5) for name, md5 in self.train_list + self.test_list)
