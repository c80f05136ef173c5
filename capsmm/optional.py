"""Optional heavy dependencies, imported where used with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import CapsmmError

EXTRAS = {"torchaudio": "audio", "soundfile": "audio", "transformers": "hf", "datasets": "hf", "tensorboard": "tensorboard"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`CapsmmError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module.split(".")[0], "")
        hint = f"pip install 'capsmm[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise CapsmmError(f"{purpose} needs the package '{module}' ({error}); install it with: {hint}") from None
