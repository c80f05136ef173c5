"""Sweeps and the run configs of a command: defaults <- file <- sweep variant <- command line.

A **sweep** is a list of axes; each axis maps dotted keys to equal-length lists that vary
together, and the runs are the product of the axes::

    sweep:
      - {data.name: [mnist, fashion-mnist], train.epochs: [100, 200]}   # zipped
      - {train.mode: [bp, caps]}                                         # x 2 = 4 runs

A key fixed on the command line is taken out of the sweep: if its value is one of the axis'
values, that variant (with the values zipped with it) is kept; otherwise it applies to all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .folders import run_folder
from .overrides import flatten_mapping, load_yaml, parse_assignment, set_value
from .schemas import RunConfig


@dataclass
class Sweep:
    """A product of zipped axes of overrides (see the module docstring)."""

    axes: list[dict[str, list[Any]]] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, raw: Any, source: str) -> "Sweep":
        if raw is None:
            return cls()
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list):
            raise ConfigError(f"{source}: 'sweep' must be a list of axes, each mapping keys to lists of values")
        axes = []
        for axis in raw:
            if not isinstance(axis, dict) or not axis:
                raise ConfigError(f"{source}: each sweep axis must map keys to lists of values, got {axis!r}")
            lengths = set()
            for key, values in axis.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{source}: sweep key '{key}' needs a non-empty list of values")
                lengths.add(len(values))
            if len(lengths) != 1:
                raise ConfigError(f"{source}: keys of one sweep axis vary together and need lists of equal length ({list(axis)})")
            axes.append({str(k): list(v) for k, v in axis.items()})
        return cls(axes)

    def fix(self, key: str, value: Any) -> None:
        """Take ``key`` out of the sweep because the command line fixed it to ``value``."""
        for axis in self.axes:
            if key not in axis:
                continue
            keep = [i for i, v in enumerate(axis[key]) if v == value or str(v) == str(value)]
            if keep:
                for k in axis:
                    axis[k] = [axis[k][i] for i in keep]
            del axis[key]
        self.axes = [axis for axis in self.axes if axis]

    def runs(self) -> list[dict[str, Any]]:
        """One dict of overrides per run."""
        variants = []
        for axis in self.axes:
            n = len(next(iter(axis.values())))
            variants.append([{k: v[i] for k, v in axis.items()} for i in range(n)])
        return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*variants)]


def build_runs(config_file: str | Path | None, overrides: Sequence[tuple[str, Any] | str], schema: type = RunConfig,
               seeds: Sequence[int] | None = None) -> list[Any]:
    """The run configs of a command: defaults <- file <- sweep variant <- command-line overrides.

    ``overrides`` are ``(key, value)`` pairs or ``"key=value"`` strings as ``--set`` takes them
    (the value read as YAML): ``build_runs("configs/quickstart.yaml", ["train.epochs=2"])``.
    ``seeds`` runs every cell under each seed (a sweep axis of ``train.seed``). Every run's ``out``
    is its folder (:func:`run_folder`).
    """
    overrides = [parse_assignment(o) if isinstance(o, str) else tuple(o) for o in overrides]
    base: dict[str, Any] = {}
    sweep = Sweep()
    source = str(config_file) if config_file else "command line"
    if config_file is not None:
        data = load_yaml(config_file)
        sweep = Sweep.from_yaml(data.pop("sweep", None), source)
        base = flatten_mapping(data, source, schema)
    if seeds:
        if any(key == "train.seed" for key, _ in overrides):
            raise ConfigError("give either --seed or --seeds, not both")
        sweep.axes = [axis for axis in sweep.axes if "train.seed" not in axis] + [{"train.seed": list(seeds)}]
    sweep_keys = [key for axis in sweep.axes for key in axis]
    for key, value in overrides:
        sweep.fix(key, value)
    cli_keys = [key for key, _ in overrides]
    explicit_out = "out" in cli_keys
    default_base = Path("runs") / Path(config_file).stem if config_file else Path("runs")
    runs = []
    for variant in sweep.runs():
        config = schema()
        for key, value in itertools.chain(base.items(), variant.items(), overrides):
            set_value(config, key, value)
        config.out = str(run_folder(config, config.out or default_base, sweep_keys, cli_keys, explicit_out=explicit_out,
                                    from_file=config_file is not None))
        runs.append(config)
    return runs
