"""Typed configuration: frozen dataclasses validated from plain mappings.

Every component declares its settings as a frozen dataclass whose fields have
type annotations and defaults. :func:`parse_config` turns a mapping from a
preset into that dataclass, rejecting unknown keys, wrong types and values
outside a declared range with a :class:`ConfigError` that names the full key
(``stage.field``), the value and what is allowed.

Ranges and other checks are declared on the annotation, so every config gets
them the same way::

    crf: Annotated[int, Range(ge=0, le=51)] = 18
    fps: Optional[Annotated[float, Range(gt=0)]] = None
    thresholds: tuple[Annotated[float, Range(ge=0, le=1)], ...] = (0.6, 0.7)
    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = None

A config whose fields depend on each other adds ``check(self, where)`` and
raises :class:`ConfigError` there; :func:`parse_config` calls it last.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Settings of a component that takes none."""


class OutOfRange(ConfigError):
    """A value of the right type that a declared check refuses."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a number: any of ``ge`` (>=), ``gt`` (>), ``le`` (<=), ``lt`` (<)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    refusal = "is out of range (allowed: {})"

    def allows(self, value: Any) -> bool:
        """True when ``value`` lies in the interval."""
        return not (
            (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"{self.ge:g} to {self.le:g}"
        bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        return " and ".join(bounds) or "any finite number"


@dataclasses.dataclass(frozen=True)
class PowerOfTwo:
    """A power of two from ``ge`` to ``le`` (image sides of networks that halve and double)."""

    ge: int = 1
    le: int = 1 << 30
    refusal = "is out of range (allowed: {})"

    def allows(self, value: Any) -> bool:
        return self.ge <= value <= self.le and value & (value - 1) == 0

    def __str__(self) -> str:
        return f"a power of two from {self.ge} to {self.le}"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Text matching the regular expression ``regex`` in full; ``example`` says what that is."""

    regex: str
    example: str
    refusal = "is not valid (expected {})"

    def allows(self, value: Any) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.example


@dataclasses.dataclass(frozen=True)
class Marker:
    """A label on a setting that checks nothing, e.g. :data:`NAMES_WEIGHTS`."""

    name: str


#: Marks settings that name a weight file (a registered weight name or a path).
NAMES_WEIGHTS = Marker("weight file")

#: The check types :func:`coerce` applies.
CHECKS = (Range, PowerOfTwo, Pattern)


def shown(value: Any) -> str:
    """A short ``repr`` of ``value`` for messages (bounded even for huge or deeply nested YAML data)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    return short.repr(value)


def split_annotation(tp: Any) -> tuple[Any, list[Any]]:
    """``(base type, its Annotated metadata)`` of annotation ``tp``."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, extras
    return tp, []


def _type_name(tp: Any) -> str:
    tp = split_annotation(tp)[0]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in that type.

    Ints are accepted where floats are expected, strings where paths are,
    and lists where tuples are; floats must be finite and every check declared
    with ``Annotated`` must pass. Raises :class:`ConfigError` naming ``key``.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, extras = split_annotation(tp)
        value = coerce(base, value, key)
        for check in extras:
            if isinstance(check, CHECKS) and value is not None and not check.allows(value):
                raise OutOfRange(f"{key}: {shown(value)} " + check.refusal.format(check))
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(arg, value, key)
            except OutOfRange:
                raise
            except ConfigError:
                continue
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            item = args[0] if args else Any
            items = [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise OutOfRange(f"{key}: {shown(value)} is not a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return parse_config(tp, value, key)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {shown(value)}")


def parse_config(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from ``values``; ``where`` prefixes key names in errors."""
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {shown(values)}")
    values = dict(values or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting (known: {known})")
    kwargs = {name: coerce(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required setting is missing")
    config = cls(**kwargs)
    if hasattr(config, "check"):
        config.check(where)
    return config


def setting_types(cls: type) -> dict[str, Any]:
    """Annotation of every field of config dataclass ``cls``, checks included (``Annotated``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def marked_settings(cls: type, marker: Marker, prefix: str = "") -> list[str]:
    """Dotted names of the settings of ``cls`` (nested configs included) carrying ``marker``."""
    names = []
    for name, tp in setting_types(cls).items():
        base, extras = split_annotation(tp)
        if marker in extras:
            names.append(prefix + name)
        elif dataclasses.is_dataclass(base):
            names += marked_settings(base, marker, f"{prefix}{name}.")
    return names


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML-ready dict of a config dataclass (paths become strings, tuples lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)
