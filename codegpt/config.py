"""Typed configs from YAML with ``section.field=value`` overrides: the one loader of every stage.

Every stage loads its YAML into dataclasses with ``load_config``, so a typo is an error naming
the closest valid key instead of a silently ignored setting, a value of the wrong type is
refused up front, and each dataclass checks its own values in ``__post_init__``.

The same concept has the same key in every stage: ``data_dir`` is the folder a stage reads,
``tokenizer`` the tokenizer folder and ``out_dir`` the folder it writes. Keys
that were renamed (``RENAMED`` on a config class) still load, with a warning naming the new
key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from codegpt.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO_ROOT / "configs"



def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted keys of a (nested) dataclass, e.g. ``optim.lr``."""
    keys = []
    for f in dataclasses.fields(cls):
        ftype = _field_types(cls)[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(ftype):
            keys.extend(valid_keys(ftype, name + "."))
        else:
            keys.append(name)
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _first_leaf(key: str, value: Any) -> str:
    while isinstance(value, dict) and value:
        sub = next(iter(value))
        key, value = f"{key}.{sub}", value[sub]
    return key


def _unknown_key(key: str, cls: type) -> ConfigError:
    keys = valid_keys(cls) + list(getattr(cls, "EXTRA_KEYS", ()))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, ftype: Any, key: str, root: type | None = None) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(ftype)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item,) = set(typing.get_args(ftype)) - {Ellipsis} or {Any}
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if ftype is Any:
        return value
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if ftype is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if ftype is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(ftype):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return from_dict(ftype, value, prefix=key + ".", root=root)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "", root: type | None = None) -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    root = root or cls
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in (data or {}).items():
        if k not in types_:
            raise _unknown_key(_first_leaf(prefix + k, v), root)
        kwargs[k] = _coerce(v, types_[k], prefix + k, root)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def parse_overrides(overrides: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.field=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def find_named_config(stage: str, name: str) -> Path:
    """Resolve ``name`` to ``configs/<stage>/<name>.yaml`` (a path is returned unchanged)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for root in (Path.cwd() / "configs", CONFIG_ROOT):
        cand = root / stage / f"{name}.yaml"
        if cand.is_file():
            return cand
    known = sorted(x.stem for x in (CONFIG_ROOT / stage).glob("*.yaml"))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"no {stage} config named '{name}' (known: {', '.join(known)}){hint}")


def dump_yaml(obj: Any, path: str | Path) -> None:
    from codegpt.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def apply_renames(raw: dict, renamed: dict[str, str]) -> dict:
    """Move values from old dotted keys to their new names (with a warning), so configs and
    command lines written before a rename keep working."""
    for old, new in renamed.items():
        *parents, leaf = old.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        log.warning("config key '%s' is now '%s'", old, new)
        raw = deep_merge(raw, _nested(new, value))
    return raw


def _nested(key: str, value: Any) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """A stage's config: ``configs/<cls.STAGE>/NAME.yaml`` (or a path) plus overrides.

    ``cls.RENAMED`` maps old keys to new ones; ``cls.resolve_raw(raw)``, if defined, expands
    the raw mapping first (e.g. ``model.size`` into a named model's fields)."""
    raw = read_yaml(find_named_config(cls.STAGE, str(path))) if path else {}
    return config_from_raw(cls, deep_merge(raw, parse_overrides(overrides)))


def config_from_raw(cls: type[T], raw: dict) -> T:
    """A stage's config from a mapping as its YAML file would hold it (old keys renamed,
    ``cls.resolve_raw`` applied), checked field by field."""
    raw = apply_renames(raw, getattr(cls, "RENAMED", {}))
    resolve = getattr(cls, "resolve_raw", None)
    return from_dict(cls, resolve(raw) if resolve else raw)
