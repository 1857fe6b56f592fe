"""The model-config flags every job shares, in one syntax: ``--preset NAME``, then ``--config``
(a JSON object or .json file of fields, e.g. a sweep's best_config.json), then one flag per
config field (``--lr 1e-3 --img-size 32 --memory-slots 50``); later ones win.

    p = argparse.ArgumentParser()
    add_config_flags(p, default_preset="paper-kth")
    cfg = config_from_args(p.parse_args())

The settings dataclasses (``RunSettings``, ``SweepSettings``) get their flags the same way,
generated from their fields (``add_settings_flags``, ``settings_from_args``): the defaults, help
texts and choices live in the dataclass, once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

from .config import PRESETS, ConfigError, LMCConfig, preset

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def field_type(f: dataclasses.Field) -> type:
    """The scalar type of a dataclass field annotated ``int``, ``float | None``, ... (a string
    under ``from __future__ import annotations``)."""
    names = [t.strip() for t in str(f.type).split("|") if t.strip() != "None"]
    if len(names) != 1 or names[0] not in _TYPES:
        raise TypeError(f"field {f.name!r}: no flag for type {f.type!r}")
    return _TYPES[names[0]]


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
            g.add_argument(flag(f.name), dest=f.name, type=field_type(f),
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


# ---------------------------------------------------------------------------------------------
# flags generated from a settings dataclass

def settings_flag(f: dataclasses.Field) -> str:
    """``--<field name with dashes>``, or ``--<metadata "flag">`` where the user-facing name
    differs (``RunSettings.use_gpu``: ``--gpus``)."""
    return flag(f.metadata.get("flag", f.name))


def add_settings_flags(p: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
                       defaults: dict | None = None, helps: dict | None = None,
                       title: str | None = None) -> None:
    """One flag per field of the settings dataclass ``cls`` but ``skip`` (``settings_flag``;
    ``dest`` the field's name): the type from the annotation; help, choices and what a None
    default means ("when_none") from the field's metadata; a bool a switch (``store_true``;
    ``--x/--no-x`` when it defaults to True).

    The default is the dataclass's; ``defaults`` holds a job's own instead (a sweep's trials
    train with one worker; None makes a field without a default optional); a field with
    neither is a required flag. ``helps``: a job's own help text for a field."""
    g = p.add_argument_group(title) if title else p
    defaults, helps = defaults or {}, helps or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not has_flag(f):
            continue
        kind = field_type(f)
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        text = helps.get(f.name, f.metadata.get("help", ""))
        kw = {"dest": f.name}
        if kind is bool:
            kw.update(default=bool(default), action=argparse.BooleanOptionalAction if default
                      else "store_true")
        else:
            required = default is dataclasses.MISSING
            choices = f.metadata.get("choices")
            kw.update(type=_argument_type(f.metadata["parse"]) if "parse" in f.metadata
                      else kind, choices=choices, required=required,
                      default=None if required else default,
                      metavar=f.metadata.get("metavar") or (
                          None if choices else f.name.upper() if kind is str
                          else kind.__name__.upper()))
            if "(default:" in text:              # a job's own help says it
                pass
            elif default is None and "when_none" in f.metadata:
                text += f" (default: {f.metadata['when_none']})"
            elif default not in (None, dataclasses.MISSING):
                text += " (default: %(default)s)"
        g.add_argument(settings_flag(f), help=text.strip() or None, **kw)


def has_flag(f: dataclasses.Field) -> bool:
    """Whether a settings field has a flag of its own (metadata "flag": None: another flag sets
    it, as ``--num-workers MIN-MAX`` sets ``RunSettings.min_workers``)."""
    return f.metadata.get("flag", "") is not None


def _argument_type(parse):
    """A field's own parser as an argparse type: its error message is argparse's."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def settings_from_args(a: argparse.Namespace, cls, *, skip: tuple[str, ...] = (), **values):
    """``cls`` (validated as it is made) from the flags of ``add_settings_flags``; ``values``
    set fields a job decides itself, ``skip``ped fields keep the dataclass's default."""
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(cls)
             if f.name not in skip and f.name not in values and has_flag(f)}
    return cls(**given, **values)
