"""Crash logs: the full traceback of an unexpected failure, in a file the one-line error names."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from .version import __version__


def crash_log(error: BaseException, folder: Path | None = None) -> Path:
    """Write the traceback of an unexpected ``error`` (its causes included) to a new log file in
    ``folder`` (default ``$CAPSMM_LOG_DIR``, else the temporary folder); returns its path.

    The path is remembered on the error, and an error logged already returns its log: a run logs
    its failure into its own folder (:func:`capsmm.training.launched`), where the user looks, and the
    command line then names that file instead of writing a second one. Under torchrun the file
    name says which rank wrote it.
    """
    if isinstance(getattr(error, "crash_log", None), Path):
        return error.crash_log  # type: ignore[attr-defined]
    fallback = Path(os.environ.get("CAPSMM_LOG_DIR") or tempfile.gettempdir())
    rank = f"rank{os.environ['RANK']}-" if "RANK" in os.environ else ""
    prefix = f"capsmm-error-{rank}{time.strftime('%Y%m%d-%H%M%S')}-"
    try:
        Path(folder or fallback).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder or fallback, prefix=prefix, suffix=".log")
    except OSError:  # the run folder is not writable (a full disk, a read-only mount): the error must still be told
        fallback.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=fallback, prefix=prefix, suffix=".log")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"capsmm {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}\n")
        handle.write(f"command: {' '.join(sys.argv)}\n\n")
        handle.write("".join(traceback.format_exception(error)))
    error.crash_log = Path(name)  # type: ignore[attr-defined]
    return Path(name)
