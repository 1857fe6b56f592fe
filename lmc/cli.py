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


class _RemovedSet(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        field, _, value = values.partition("=")
        parser.error(f"--set {values}: config fields have their own flags now, e.g. "
                     f"{flag(field)} {value or 'VALUE'} (see --help)")


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
    p.add_argument("--set", action=_RemovedSet, help=argparse.SUPPRESS)


def config_from_args(a: argparse.Namespace, *, preset_name: str | None = None,
                     overrides: dict | None = None, skip: tuple[str, ...] = ()) -> LMCConfig:
    """``preset_name`` (default: --preset), ``overrides`` (a job's own defaults), --config,
    then the field flags; validated once (``ConfigError`` naming the field)."""
    d = preset(preset_name or a.preset).to_dict()
    d.update(overrides or {})
    if a.config:
        text = open(a.config).read() if os.path.isfile(a.config) else a.config
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {a.config!r}: neither a .json file nor a JSON object "
                              f"({e.msg} at position {e.pos})") from None
        unknown = sorted(set(extra) - set(d))
        if unknown:
            raise ConfigError(f"--config: unknown config field(s) {unknown}; allowed: {sorted(d)}")
        d.update(extra)
    d.update({f.name: getattr(a, f.name) for f in dataclasses.fields(LMCConfig)
              if f.name not in skip and getattr(a, f.name, None) is not None})
    return LMCConfig.from_dict(d)
