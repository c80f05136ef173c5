"""Typed values from YAML and ``--set``, the keys of a schema, and the ``--help`` listing of them.

A value is checked against its field's annotation (:func:`coerce`: ``1`` is a valid float,
``'1e-3'`` too, ``'none'`` is null); an unknown key is a one-line error that names the valid keys
of its section and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, ConfigError
from .folders import with_added_keys
from .fields import one_of
from .schemas import RunConfig


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int->float, '1e-3'->float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], key) for v in value]
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


@functools.cache
def _field_types(cls: type) -> Mapping[str, Any]:
    """Field name -> annotation of a dataclass, evaluated once per class: ``typing.get_type_hints``
    evaluates the string annotations anew each call, and setting a saved config's 50-odd keys
    (loading a run for ``predict.py``) called it 300 times, about 30 ms."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def sections(schema: type) -> dict[str, type]:
    """Section name -> dataclass of a run-config schema (``data``, ``model``, ``train``...), in field order."""
    hints = _field_types(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema) if _is_section(hints[f.name])}


def top_level(schema: type) -> dict[str, Any]:
    hints = _field_types(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema) if not _is_section(hints[f.name])}


def describe_keys(schema: type = RunConfig) -> str:
    """Every config key with its type, default and help, one per line (for ``--help``)."""
    lines = []
    defaults = schema()
    for section, cls in [*sections(schema).items(), ("", schema)]:
        hints = _field_types(cls)
        instance = getattr(defaults, section) if section else defaults
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            key = f"{section}.{f.name}" if section else f.name
            check = f.metadata.get("check")
            choices = f" [{', '.join(check.choices())}]" if isinstance(check, one_of) else ""
            lines.append(f"  {key:26s} {_describe(hints[f.name])}, default {getattr(instance, f.name)!r}: {f.metadata['help']}{choices}")
    return "\n".join(lines)


def valid_keys(schema: type = RunConfig) -> list[str]:
    keys = [f"{section}.{name}" for section, cls in sections(schema).items() for name in _field_types(cls)]
    return keys + list(top_level(schema))


def _unknown_key(key: str, schema: type) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(schema), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    section = key.split(".")[0]
    if section in sections(schema):
        valid = ", ".join(f"{section}.{k}" for k in _field_types(sections(schema)[section]))
    else:
        valid = ", ".join([*(f"{s}.*" for s in sections(schema)), *top_level(schema), "sweep"])
    return ConfigError(f"unknown config key '{key}'{hint}; valid: {valid}")


def set_value(config: Any, key: str, value: Any) -> None:
    """Set the dotted ``key`` (e.g. ``train.lr``) of a run config to ``value``, checking its type."""
    schema = type(config)
    if key in top_level(schema):
        setattr(config, key, coerce(value, top_level(schema)[key], key))
        return
    section, _, name = key.partition(".")
    if section not in sections(schema) or name not in _field_types(sections(schema)[section]):
        raise _unknown_key(key, schema)
    setattr(getattr(config, section), name, coerce(value, _field_types(sections(schema)[section])[name], key))


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (``3``, ``1e-3``, ``[30, 60]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-3), got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten_mapping(data: dict[str, Any], source: str, schema: type = RunConfig) -> dict[str, Any]:
    """``{train: {lr: 1}}`` -> ``{"train.lr": 1}``; non-mapping sections are errors."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections(schema):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section '{key}' must be a mapping of keys to values")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping with sections data/model/train")
    return data


def config_from_saved(schema: type, saved: Mapping[str, Any], where: Path) -> Any:
    """The config object of a run from the dict saved with it (``results.json``, a checkpoint), keys added
    since at the value the run was made with (:func:`with_added_keys`); a key this capsmm does not know,
    or a value it refuses, is a :class:`CheckpointError`: the run at ``where`` was written by an
    incompatible version."""
    config = schema()
    for key, value in with_added_keys(dict(saved)).items():
        try:
            set_value(config, key, value)
        except ConfigError as error:
            raise CheckpointError(f"{where} was written by an incompatible capsmm version (its config: {error}); "
                                  "use the capsmm release that trained it") from None
    return config
