"""Service configuration: one frozen dataclass per service, filled from
command-line flags, with each flag's default taken from an environment
variable when set (``MOERM_<FIELD>``, for Kubernetes manifests).

Declare fields with :func:`option`; :func:`parse_config` builds the parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")
ENV_PREFIX = "MOERM_"


def option(default: Any, help: str, *, env: str | None = None) -> Any:
    """A config field with its flag help and (optionally) its env var name."""
    return dataclasses.field(default=default, metadata={"help": help, "env": env})


def env_name(field: dataclasses.Field) -> str:
    return field.metadata.get("env") or ENV_PREFIX + field.name.upper()


def _convert(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if kind in (int, float, str):
        return kind(raw)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    raise TypeError(f"{name}: unsupported config type {kind}")


def build_parser(cls: type, prog: str, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_options(parser, cls)
    return parser


def add_options(parser: argparse.ArgumentParser, cls: type, *, env: bool = True) -> None:
    """One flag per field of ``cls`` (``--field-name``, default the field's; with
    ``env`` the default comes from ``MOERM_<FIELD>`` when it is set)."""
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        help_text = field.metadata.get("help", "")
        if env:
            name = env_name(field)
            if name in os.environ:
                default = _convert(kind, os.environ[name], name)
            help_text = f"{help_text} [env {name}]"
        if kind is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                default=default,
                help=help_text,
                action=argparse.BooleanOptionalAction,
            )
        else:
            parser.add_argument(
                flag,
                dest=field.name,
                default=default,
                help=help_text,
                type=lambda raw, kind=kind, flag=flag: _convert(kind, raw, flag),
            )


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str) -> T:
    """Parse ``argv`` (flags over env vars over defaults) into ``cls``."""
    args = build_parser(cls, prog).parse_args(argv)
    config = cls(**vars(args))
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config
