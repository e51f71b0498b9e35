"""Typed configs: dataclasses loaded from YAML, overridable from the command line.

A run config is a tree of dataclasses. `load_config(RunConfig, "small.yaml", ["model.codebook_size=2048"])`
reads the YAML, applies the `--set` overrides and builds the dataclasses, checking every key and type.
Anything wrong raises `ConfigError` with a one-line message naming the key; the CLI turns it into
exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from musetok.shared.errors import UserError

T = TypeVar("T")

# The YAML configs, installed as the package data of `musetok.configs` (the top-level configs/ folder).
CONFIG_DIR = Path(str(importlib.resources.files("musetok.configs")))


class ConfigError(UserError, ValueError):
    """A bad config: unknown key, wrong type, missing file. The message is one line."""


def resolve_config_path(name_or_path: str | Path, kind: str) -> Path:
    """Find a config by path, or by name under `configs/<kind>/<name>.yaml`."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = CONFIG_DIR / kind / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(q.stem for q in (CONFIG_DIR / kind).glob("*.yaml")) if (CONFIG_DIR / kind).is_dir() else []
    hint = f" (known {kind} configs: {', '.join(known)})" if known else ""
    raise ConfigError(f"config file not found: {name_or_path}{hint}")


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                kind: str = "") -> T:
    """Build `cls` from an optional YAML file plus `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_config_path(path, kind)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        apply_override(data, item)
    return from_dict(cls, data)


def apply_override(data: dict, item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`2048`, `true`, `[2, 2]`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Recursively build dataclass `cls` from a plain dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def to_dict(obj: Any) -> dict:
    """Plain-dict form of a config dataclass (tuples become lists), for JSON and YAML."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming `key` unless `condition` holds (for `__post_init__` checks)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
