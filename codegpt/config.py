"""Typed configs from YAML with ``section.field=value`` overrides: the one loader of every stage.

Every stage loads its YAML into dataclasses with ``load_config``, so a typo is an error naming
the closest valid key instead of a silently ignored setting, and a value of the wrong type or
outside its field's declared range is refused up front, naming the key, the value and what is
allowed. A field declares its range beside it with ``setting`` (bounds, choices, a pattern);
NaN and inf are refused for every float field unless it says otherwise. Rules that tie several
fields together stay in the dataclass's ``__post_init__``.

On the command line (``section.field=value``) a value is read as YAML, except for a field
declared ``str`` (or ``str | None``), which takes the text after ``=`` verbatim, so
``out_dir=0755`` is the folder "0755", not the number 493. In a YAML file a number given for a
string field is refused with a hint to quote it.

The same concept has the same key in every stage: ``data_dir`` is the folder a stage reads,
``tokenizer`` the tokenizer folder and ``out_dir`` the folder it writes. Keys
that were renamed (``RENAMED`` on a config class) still load, with a warning naming the new
key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from codegpt.errors import ConfigError
from codegpt.io import atomic_write_text

T = TypeVar("T")

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO_ROOT / "configs"

CHECK = "codegpt.check"      # field metadata: the field's Check (declared with ``setting``)
KEYS_OF = "codegpt.keys_of"  # field metadata: "module:Class" whose keys a dict field holds
BASE_CONFIG_KEY = "config"   # in such a section: the name of the base config it goes over
# A device: cpu, cuda, cuda:N or mps (``setting(..., **DEVICE)``; see ``check_device``)
DEVICE = {"pattern": r"cpu|cuda(:\d+)?|mps", "what": "cpu, cuda, cuda:N or mps"}


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


@dataclasses.dataclass(frozen=True)
class Check:
    """The values a field allows: bounds (``ge``/``gt``/``le``/``lt``, closed or open),
    ``choices``, a regex ``pattern`` (a full match) and, for floats, ``finite``. With both
    choices and bounds a value is allowed if it is one of the choices *or* within the bounds
    (``workers: -1 or >= 1``). ``what`` names the allowed values in messages where the default
    wording would be unclear. A list field's check applies to each item."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    what: str | None = None
    finite: bool = True

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def describe(self) -> str:
        """The allowed values in words: ``>= 1``, ``in [0, 1)``, ``one of a, b``, ..."""
        if self.what:
            return self.what
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None \
            else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None \
            else None
        if low and high:
            bounds = f"in {low[0]}{_fmt(low[1])}, {_fmt(high[1])}{high[0]}"
        elif low:
            bounds = f"{'>=' if low[0] == '[' else '>'} {_fmt(low[1])}"
        elif high:
            bounds = f"{'<=' if high[0] == ']' else '<'} {_fmt(high[1])}"
        else:
            bounds = ""
        parts = []
        if self.choices is not None:
            names = ", ".join(_fmt(c) for c in self.choices)
            parts.append(names if bounds else f"one of {names}")
        if bounds:
            parts.append(bounds)
        if self.pattern is not None:
            parts.append(f"a full match of {self.pattern!r}")
        return " or ".join(parts)

    def allows(self, value: Any) -> bool:
        if isinstance(value, float) and self.finite and not math.isfinite(value):
            return False
        if self.choices is not None and value in self.choices:
            return True
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if not self.bounded:
            return self.choices is None
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: Iterable | None = None, pattern: str | None = None,
            what: str | None = None, finite: bool = True, keys_of: str | None = None) -> Any:
    """A dataclass field with its allowed values declared beside it, checked by ``from_dict``
    for every value a config file or override gives::

        lr: float = setting(6e-4, gt=0)                     # lr > 0 (and finite)
        dropout: float = setting(0.0, ge=0, lt=1)           # 0 <= dropout < 1
        precision: str = setting("auto", choices=("auto", "fp32", "bf16"))
        device: str = setting("cpu", **DEVICE)              # a pattern, named in messages
        space_runs: list[int] = setting(default_factory=list, ge=1)  # each item >= 1

    ``finite=False`` lets a float field take NaN or inf. ``keys_of="module:Class"`` marks a
    dict field that holds another config class's keys (a reference run's stage section), so
    overrides into it are typed by that class."""
    check = Check(ge, gt, le, lt, None if choices is None else tuple(choices), pattern, what,
                  finite)
    metadata = {CHECK: check}
    if keys_of is not None:
        metadata[KEYS_OF] = keys_of
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_check(f: dataclasses.Field) -> Check | None:
    """The Check a field declares with ``setting`` (None for a plain field)."""
    return f.metadata.get(CHECK)


def section_class(f: dataclasses.Field) -> type | None:
    """The config class whose keys a ``setting(..., keys_of=...)`` dict field holds."""
    target = f.metadata.get(KEYS_OF)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_device(device: str, what: str = "device") -> None:
    """Refuse a device this machine does not have (cuda without CUDA, cuda:N past the last
    GPU, mps without MPS), before any work starts. The form is checked by ``DEVICE``."""
    if not re.fullmatch(DEVICE["pattern"], device):
        raise ConfigError(f"{what} must be {DEVICE['what']}, got {device!r}")
    if device == "cpu":
        return
    import torch  # heavy: a config loads without it, and a CPU device needs no check

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={device} but this machine has no CUDA device (torch "
                              f"{torch.__version__} sees none): use cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={device} but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif not torch.backends.mps.is_available():
        raise ConfigError(f"{what}=mps but MPS is not available on this machine: use cpu")


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


def _coerce(value: Any, ftype: Any, key: str, root: type | None = None, hint: str = "") -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key (``hint``:
    the allowed values, added to a type error)."""
    origin = typing.get_origin(ftype)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, key, root, hint)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list) or ftype in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item,) = set(typing.get_args(ftype)) - {Ellipsis} or {Any}
        items = [_coerce(v, item, f"{key}[{i}]", root, hint) for i, v in enumerate(value)]
        return tuple(items) if tuple in (origin, ftype) else items
    if ftype is Any:
        return value
    if ftype is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return value
    hint = f" {hint}" if hint else ""
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if ftype is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects an integer{hint}, got {value!r}")
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
        raise ConfigError(f"config key '{key}' expects an integer{hint}, got {value!r}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number{hint}, got {value!r}")
    if ftype is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a string, got the number {value!r}: "
                              "put the value in quotes (YAML reads it as a number)")
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(ftype):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return from_dict(ftype, value, prefix=key + ".", root=root)
    return value


def _check_value(value: Any, check: Check | None, key: str) -> None:
    """Refuse a coerced value outside its field's declaration (each item of a list), and NaN
    or inf for any float field that does not allow them."""
    if value is None or isinstance(value, dict) or dataclasses.is_dataclass(value):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, check, f"{key}[{i}]")
        return
    what = check.describe() if check is not None else ""
    if isinstance(value, float) and not math.isfinite(value) and (check is None or check.finite):
        raise ConfigError(f"{key} must be a finite number{' ' + what if what else ''}, "
                          f"got {value!r}")
    if check is not None and not check.allows(value):
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def from_dict(cls: type[T], data: dict, prefix: str = "", root: type | None = None) -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and every value
    outside its field's declaration (``setting``), with the full dotted key in the message."""
    root = root or cls
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in (data or {}).items():
        if k not in fields:
            raise _unknown_key(_first_leaf(prefix + k, v), root)
        check = field_check(fields[k])
        value = _coerce(v, types_[k], prefix + k, root, check.describe() if check else "")
        _check_value(value, check, prefix + k)
        kwargs[k] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def key_type(cls: type, key: str) -> Any:
    """The declared type of dotted ``key`` of config class ``cls``, or None if it has none.

    A renamed key has its new key's type; ``cls.EXTRA_KEYS`` (keys resolved before the
    dataclass is built, such as ``model.size``) are strings; a dict field declared with
    ``keys_of`` types its keys by that class, and its ``config`` (the base config) is a string.
    """
    key = getattr(cls, "RENAMED", {}).get(key, key)
    if key in getattr(cls, "EXTRA_KEYS", ()):
        return str
    if not dataclasses.is_dataclass(cls):
        return None
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if head not in fields:
        return None
    ftype = _field_types(cls)[head]
    if not rest:
        return ftype
    if dataclasses.is_dataclass(ftype):
        return key_type(ftype, rest)
    section = section_class(fields[head])
    if section is None:
        return None
    return str if rest == BASE_CONFIG_KEY else key_type(section, rest)


def key_field(cls: type, key: str) -> dataclasses.Field | None:
    """The dataclass field of dotted ``key`` of config class ``cls`` (None if it has none)."""
    *parents, leaf = key.split(".")
    for part in parents:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) \
            else {}
        if part not in fields or not dataclasses.is_dataclass(_field_types(cls)[part]):
            return None
        cls = _field_types(cls)[part]
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    return fields.get(leaf)


def check_override(cls: type, key: str, text: str) -> Any:
    """The value ``key=text`` gives config class ``cls``'s field, read as an override is and
    checked by the field's declaration: a ConfigError naming the key, as loading would raise.
    (For a command-line flag that is one key's override: its error comes before any work.)"""
    node = parse_overrides([f"{key}={text}"], cls)
    for part in key.split("."):
        node = node[part]
    f, ftype = key_field(cls, key), key_type(cls, key)
    if f is None or ftype is None:
        raise _unknown_key(key, cls)
    check = field_check(f)
    value = _coerce(node, ftype, key, cls, check.describe() if check else "")
    _check_value(value, check, key)
    return value


def _is_text(ftype: Any) -> bool:
    if typing.get_origin(ftype) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(ftype) if a is not type(None)] == [str]
    return ftype is str


def parse_overrides(overrides: Iterable[str], cls: type | None = None) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``: values parsed as YAML, except
    that with the config class ``cls`` a key whose field is a string keeps its text verbatim
    (``out_dir=0755`` is "0755", ``out_dir=/x/a #b`` is "/x/a #b")."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.field=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if cls is not None and _is_text(key_type(cls, key)):
            value = raw
        else:
            try:
                value = load_yaml(raw) if raw != "" else ""
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


# YAML 1.1 reads 4:00:00 as the base-60 integer 14400 and 1:30 as 90 (YAML 1.2 dropped that):
# a Slurm time limit written without quotes would become minutes. Here such a value is text.
_SEXAGESIMAL = r"(?![-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$)"


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader without YAML 1.1's base-60 numbers."""

    yaml_implicit_resolvers = {
        first: [(tag, re.compile("^" + _SEXAGESIMAL + rx.pattern.removeprefix("^"), rx.flags)
                 if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") else rx)
                for tag, rx in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_yaml(text: str):
    """``yaml.safe_load`` for configs: the same, except that 4:00:00 stays text."""
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
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


def yaml_text(obj: Any) -> str:
    """A config (a dataclass, or a mapping as a config file holds it) as YAML, keys in their
    declared order: what config.yaml files hold."""
    return yaml.safe_dump(to_dict(obj) if dataclasses.is_dataclass(obj) else obj,
                          sort_keys=False)


def dump_yaml(obj: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml_text(obj))


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
        value = node[leaf]
        log.warning("config key '%s' is now '%s'", old, new)
        raw = deep_merge(_without(raw, old.split(".")), _nested(new, value))
    return raw


def _without(raw: dict, parts: list[str]) -> dict:
    """A copy of ``raw`` without the key at ``parts``, and without the mappings that only
    held it (``output: {dir: x}`` leaves nothing behind)."""
    head, *rest = parts
    out = dict(raw)
    if rest:
        inner = _without(out[head], rest)
        if inner:
            out[head] = inner
            return out
    del out[head]
    return out


def _nested(key: str, value: Any) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """A stage's config: ``configs/<cls.STAGE>/NAME.yaml`` (or a path) plus overrides.

    ``cls.RENAMED`` maps old keys to new ones; ``cls.resolve_raw(raw)``, if defined, expands
    the raw mapping first (e.g. ``model.size`` into a named model's fields)."""
    raw = read_yaml(find_named_config(cls.STAGE, str(path))) if path else {}
    return config_from_raw(cls, deep_merge(raw, parse_overrides(overrides, cls)))


def config_from_raw(cls: type[T], raw: dict) -> T:
    """A stage's config from a mapping as its YAML file would hold it (old keys renamed,
    ``cls.resolve_raw`` applied), checked field by field."""
    raw = apply_renames(raw, getattr(cls, "RENAMED", {}))
    resolve = getattr(cls, "resolve_raw", None)
    return from_dict(cls, resolve(raw) if resolve else raw)
