"""Run folders and the resume policy: where a run lives is a function of its config.

The same run always lands in the same folder, so ``--resume`` finds it; the keys a resumed run may
change (:data:`RESUMABLE_SUFFIXES`) never name a folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..ff import FF_DEFAULTS


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


#: keys (by suffix) that may differ between a run and its resumption, so they do not name its folder
RESUMABLE_SUFFIXES = (".epochs", ".device", ".progress", ".tensorboard", ".eval_batch_size", ".root", ".dist_timeout")
#: of those, the ones that do not change what a finished run computed (a rerun with them changed is the same run)
INCIDENTAL_SUFFIXES = tuple(s for s in RESUMABLE_SUFFIXES if s != ".epochs")


#: config keys added after runs were first written, with the value that reproduces a run whose saved
#: config predates them: such runs still resume, count as finished and fall in the cells of runs made since
ADDED_KEYS: dict[str, Any] = {
    "train.lean_keep": 0, "train.lean_segments": 1, "train.optimizer": "adam", "train.momentum": 0.9, "train.lr_cooldown": False,
    **{f"model.ff_{key}": value for key, value in FF_DEFAULTS.items()},
    "multimodal.slice_loss_weight": 0.0, "multimodal.modulation": "none", "multimodal.modulation_alpha": 0.8,
    "multimodal.modulation_epochs": [1, 50],
}


def with_added_keys(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved (nested) run config, flattened (:func:`flatten_dict`), with every :data:`ADDED_KEYS`
    key it lacks (of the sections it has) at the value its run was made with."""
    flat = flatten_dict(saved)
    sections = {key.partition(".")[0] for key in flat}
    return {k: v for k, v in ADDED_KEYS.items() if k.partition(".")[0] in sections} | flat


def flatten_dict(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (any depth)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(config: Any) -> dict[str, Any]:
    """A run config as ``{"section.key": value}`` (top-level keys as they are)."""
    return flatten_dict(config.to_dict())


def shown(value: Any) -> str:
    """A config value as it appears in folder names and tables (lists joined by ``+``)."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def run_folder(config: Any, base: str | Path, sweep_keys: Sequence[str], cli_keys: Sequence[str], *, explicit_out: bool,
               from_file: bool) -> Path:
    """The folder of a run: a function of its config, so the same run always lands in the same folder.

    ``<base>/<name>/seed-<seed>``, where ``<name>`` joins, in this order: the values of the run's
    identity keys (dataset, backbone, mode) when no config file names the runs; the values of every
    key the config file's sweep varies (always, also when flags select one cell); ``key-value`` for
    every other key set on the command line. Keys that a resumed run may change (epochs, device,
    data root...) never name a folder, so an extended run is found where it was. ``--out DIR`` on the command line is the run folder itself (the sweep's values and
    seeds below it when there are several).
    """
    flat = flat_config(config)
    seeded = "train.seed" in sweep_keys
    parts = [] if from_file or explicit_out else [shown(flat[k]) for k in config.identity_keys]
    parts += [shown(flat[k]) for k in dict.fromkeys(sweep_keys)
              if k != "train.seed" and not k.endswith(RESUMABLE_SUFFIXES) and flat[k] is not None]  # None: unset
    if not explicit_out:
        named = set(sweep_keys) | (set() if from_file else set(config.identity_keys)) | {"out", "train.seed"}
        parts += [f"{k.rsplit('.', 1)[-1]}-{shown(flat[k])}" for k in dict.fromkeys(cli_keys)
                  if k not in named and not k.endswith(RESUMABLE_SUFFIXES)]
    folder = Path(base) / slug("_".join(parts)) if parts else Path(base)
    return folder / f"seed-{config.train.seed}" if seeded or not explicit_out else folder


