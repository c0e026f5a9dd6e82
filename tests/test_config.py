"""Typed config parsing: unknown keys and wrong types fail naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest

from latentdub.toolkit.core.config import config_to_dict, parse_config
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
