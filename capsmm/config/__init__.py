"""Run configuration: commented dataclass schemas, YAML files, typed ``--set`` overrides, sweeps.

A config file is YAML with the sections of its schema (a vision run: ``data``, ``model``, ``train``),
the key ``out`` and an optional ``sweep``. Unknown keys and values of the wrong type are
:class:`ConfigError` s that name the valid keys. The resolved config is saved with every run and
inside every checkpoint.

One job per module:

| module | holds |
|---|---|
| :mod:`.fields` | a field's help text and checks (ranges, choices), :func:`check_fields` |
| :mod:`.sections` | the sections: data, encoder, head, train, multimodal |
| :mod:`.modalities` | the registry through which a modality package adds its own sections |
| :mod:`.schemas` | :class:`RunConfig` and the multimodal run schema built from the registered modalities |
| :mod:`.overrides` | typed values, ``--set``, YAML files, the keys of a schema and their ``--help`` |
| :mod:`.sweeps` | sweeps and :func:`build_runs`, the run configs of one command |
| :mod:`.folders` | run folders, and which keys a resumed run may change |

``MultimodalRunConfig`` is the multimodal schema for the modalities registered when it is first
asked for (the installed plugins are loaded then).
"""

from typing import Any

from .fields import Check, at_least, check_fields, in_range, increasing_epochs, non_negative, one_of, opt
from .folders import ADDED_KEYS, INCIDENTAL_SUFFIXES, RESUMABLE_SUFFIXES, flat_config, flatten_dict, run_folder, shown, slug, with_added_keys
from .modalities import MODALITY_SECTIONS, ModalitySections, register_modality
from .overrides import coerce, config_from_saved, describe_keys, flatten_mapping, load_yaml, parse_assignment, sections, set_value, top_level, valid_keys
from .schemas import MultimodalRun, RunConfig, multimodal_schema
from .sections import FUSIONS, DataConfig, EncoderConfig, HeadConfig, ModelConfig, MultimodalConfig, TrainConfig
from .sweeps import Sweep, build_runs

__all__ = [
    "ADDED_KEYS", "FUSIONS", "INCIDENTAL_SUFFIXES", "MODALITY_SECTIONS", "RESUMABLE_SUFFIXES",
    "Check", "DataConfig", "EncoderConfig", "HeadConfig", "ModalitySections", "ModelConfig", "MultimodalConfig", "MultimodalRun",
    "MultimodalRunConfig", "RunConfig", "Sweep", "TrainConfig",
    "at_least", "build_runs", "check_fields", "coerce", "config_from_saved", "describe_keys", "flat_config", "flatten_dict", "flatten_mapping", "in_range",
    "increasing_epochs", "load_yaml", "multimodal_schema", "non_negative", "one_of", "opt", "parse_assignment", "register_modality",
    "run_folder", "sections", "set_value", "shown", "slug", "top_level", "valid_keys", "with_added_keys",
]


def __getattr__(name: str) -> Any:
    """``MultimodalRunConfig``: built on first use, when every installed modality has registered its sections."""
    if name == "MultimodalRunConfig":
        return multimodal_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
