"""Typed config parsing: unknown keys and wrong types fail naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest

from latentdub.toolkit.core.config import NAMES_WEIGHTS, Pattern, PowerOfTwo, Range, config_to_dict, marked_settings, parse_config
from latentdub.toolkit.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Example:
    size: int = 64
    scale: float = 1.0
    mode: Literal["a", "b"] = "a"
    path: Optional[Path] = None
    layers: tuple[int, ...] = (0, 1)
    flag: bool = False


def test_defaults_and_coercion():
    cfg = parse_config(Example, {"scale": 2, "path": "~/x.pt", "layers": [3, 4], "mode": "b"}, "stage")
    assert cfg.scale == 2.0 and isinstance(cfg.scale, float)
    assert cfg.path == Path("~/x.pt").expanduser()
    assert cfg.layers == (3, 4)
    assert config_to_dict(cfg)["layers"] == [3, 4]


@pytest.mark.parametrize(
    "values, key",
    [
        ({"sise": 3}, "stage.sise"),
        ({"size": "big"}, "stage.size"),
        ({"size": True}, "stage.size"),
        ({"mode": "c"}, "stage.mode"),
        ({"layers": [1, "x"]}, "stage.layers[1]"),
        ({"flag": "yes"}, "stage.flag"),
    ],
)
def test_errors_name_the_key(values, key):
    with pytest.raises(ConfigError) as info:
        parse_config(Example, values, "stage")
    assert str(info.value).startswith(key + ":")


@dataclasses.dataclass(frozen=True)
class Checked:
    crf: Annotated[int, Range(ge=0, le=51)] = 18
    fps: Optional[Annotated[float, Range(gt=0)]] = None
    side: Annotated[int, PowerOfTwo(ge=8, le=1024)] = 64
    rate: Annotated[str, Pattern(r"[1-9][0-9]*k", "a bitrate such as 128k")] = "160k"
    weights: tuple[Annotated[float, Range(ge=0, le=1)], ...] = (0.5,)
    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = None
    start: float = 0.0
    end: Optional[float] = None

    def check(self, where):
        if self.end is not None and self.end <= self.start:
            raise ConfigError(f"{where}.end: must be after {where}.start")


@pytest.mark.parametrize("values, message", [
    ({"crf": -1}, "s.crf: -1 is out of range (allowed: 0 to 51)"),
    ({"fps": 0}, "s.fps: 0.0 is out of range (allowed: > 0)"),
    ({"fps": float("nan")}, "s.fps: nan is not a finite number"),
    ({"start": float("inf")}, "s.start: inf is not a finite number"),
    ({"side": 96}, "s.side: 96 is out of range (allowed: a power of two from 8 to 1024)"),
    ({"rate": "loud"}, "s.rate: 'loud' is not valid (expected a bitrate such as 128k)"),
    ({"weights": [0.5, 2]}, "s.weights[1]: 2.0 is out of range (allowed: 0 to 1)"),
    ({"start": 2, "end": 1}, "s.end: must be after s.start"),
    ({"crf": list(range(1000))}, "s.crf: expected int, got [0, 1, 2, 3, ...]"),
])
def test_declared_checks_name_the_key_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as info:
        parse_config(Checked, values, "s")
    assert str(info.value) == message


def test_values_inside_the_ranges_pass_and_markers_are_listed():
    cfg = parse_config(Checked, {"crf": 0, "fps": 29.97, "side": 1024, "weights": [0, 1], "end": 3}, "s")
    assert (cfg.crf, cfg.fps, cfg.side, cfg.weights, cfg.end) == (0, 29.97, 1024, (0.0, 1.0), 3.0)
    assert parse_config(Checked, {"fps": None}, "s").fps is None
    assert marked_settings(Checked, NAMES_WEIGHTS) == ["checkpoint"]
    assert str(Range()) == "any finite number" and str(Range(gt=0, le=1)) == "> 0 and <= 1"
