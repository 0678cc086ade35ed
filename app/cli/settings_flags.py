"""Command-line flags generated from the settings object, so flags and ``GPT2_*`` variables never drift.

Every field of :class:`app.server.settings.Settings` becomes ``--field-name`` (underscores to
dashes), with the field's description, its environment variable and its default as help. A flag
left out is not passed to ``Settings``, which then reads the environment: flags win, the
environment fills the rest. Values go to ``Settings`` as the strings typed, so the flag and the
variable are parsed and validated by the same code (comma lists, ``model=DEVICE`` pairs, bounds).
Booleans get ``--name`` / ``--no-name`` (``--no-warmup`` is the one users know).
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app.server.settings import Settings


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return Settings.model_config.get("env_prefix", "") + field.upper()


def _default_text(info: FieldInfo) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None or (isinstance(value, list | dict) and not value):
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _choices(info: FieldInfo) -> tuple[str, ...] | None:
    if typing.get_origin(info.annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(info.annotation))
    return None


def _metavar(name: str, info: FieldInfo) -> str:
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X] -> X
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    base = typing.get_origin(annotation) or annotation
    seconds = "second" in name or "second" in (info.description or "")
    return {
        int: "N",
        float: "SECONDS" if seconds else "X",
        str: "TEXT",
        Path: "DIR",
        list: "A,B,...",
        dict: "NAME=DEVICE,...",
    }.get(base, "VALUE")


def add_settings_flags(parser: argparse.ArgumentParser, fields: typing.Iterable[str] | None = None) -> None:
    """Add one flag per settings field (all of them unless ``fields`` names some) to ``parser``."""
    group = parser.add_argument_group("settings (each also a GPT2_* environment variable; flags win)")
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        described = info.description or name.replace("_", " ")
        help_text = f"{described} ({env_name(name)}; default: {_default_text(info)})".replace("%", "%%")
        if info.annotation is bool:
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        choices = _choices(info)
        group.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            choices=choices,
            metavar=None if choices else _metavar(name, info),
            help=help_text,
        )


def settings_from_args(args: argparse.Namespace, **extra: object) -> Settings:
    """``Settings`` from the flags given (others from ``GPT2_*`` variables and defaults).

    A bad value raises ValueError with one line naming the setting, which the CLI prints."""
    overrides = {
        name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None
    }
    overrides.update(extra)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "settings"
        raise ValueError(f"setting {where}: {first['msg']}") from None
