"""The model-config flags every job shares, in one syntax: ``--preset NAME``, then ``--config``
(a JSON object or .json file of fields, e.g. a sweep's best_config.json), then one flag per
config field (``--lr 1e-3 --img-size 32 --memory-slots 50``); later ones win.

    p = argparse.ArgumentParser()
    add_config_flags(p, default_preset="paper-kth")
    cfg = config_from_args(p.parse_args())
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

from .config import PRESETS, ConfigError, LMCConfig, preset

_TYPES = {"int": int, "float": float, "str": str}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, *, default_preset: str | None,
                     skip: tuple[str, ...] = (), preset_help: str | None = None) -> None:
    """--preset, --config and one flag per LMCConfig field (except ``skip``: fields a job
    varies itself, such as a sweep's dimensions)."""
    g = p.add_argument_group("model config (a preset, then --config, then single fields)")
    g.add_argument("--preset", default=default_preset, choices=list(PRESETS),
                   help=f"config preset (default: {preset_help or default_preset})")
    g.add_argument("--config", help="JSON object or .json file of config fields over the preset")
    for f in dataclasses.fields(LMCConfig):
        if f.name not in skip:
            g.add_argument(flag(f.name), dest=f.name, type=_TYPES[str(f.type)],
                           metavar=str(f.type).upper(), help=f"config field {f.name!r}")


_CONFIG_EXAMPLE = """'{"lr": 0.001, "memory_slots": 50}'"""


def read_config_arg(value: str) -> dict:
    """The fields that ``--config`` gives: a .json file holding one JSON object, or the object
    itself. Anything else is a ``ConfigError`` saying which of the two it failed to be."""
    fix = f"give a .json file of config fields or a JSON object such as {_CONFIG_EXAMPLE}"
    if os.path.isdir(value):
        raise ConfigError(f"--config {value!r} is a folder; {fix}")
    is_file = os.path.isfile(value)
    if is_file:
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {value!r}: the file cannot be read as JSON text ({e}); "
                              f"{fix}") from None
    else:
        text = value
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as e:
        if is_file or text.lstrip().startswith("{"):
            raise ConfigError(f"--config {value!r}: {'the file is ' if is_file else ''}not valid "
                              f"JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        raise ConfigError(f"--config {value!r}: no such file, and not a JSON object; {fix}"
                          ) from None
    if not isinstance(extra, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number",
                float: "number"}.get(type(extra), "null")
        what = "the file holds" if is_file else "no such file, and"
        raise ConfigError(f"--config {value!r}: {what} a JSON {kind}, not an object; {fix}")
    return extra


def config_from_args(a: argparse.Namespace, *, preset_name: str | None = None,
                     overrides: dict | None = None, skip: tuple[str, ...] = ()) -> LMCConfig:
    """``preset_name`` (default: --preset), ``overrides`` (a job's own defaults), --config,
    then the field flags; validated once (``ConfigError`` naming the field)."""
    d = preset(preset_name or a.preset).to_dict()
    d.update(overrides or {})
    if a.config:
        extra = read_config_arg(a.config)
        unknown = sorted(set(extra) - set(d))
        if unknown:
            raise ConfigError(f"--config: unknown config field(s) {unknown}; allowed: {sorted(d)}")
        d.update(extra)
    d.update({f.name: getattr(a, f.name) for f in dataclasses.fields(LMCConfig)
              if f.name not in skip and getattr(a, f.name, None) is not None})
    return LMCConfig.from_dict(d)
