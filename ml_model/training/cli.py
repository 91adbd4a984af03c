"""Command-line flags built from a config dataclass, so that each parameter's name, type,
default, allowed values and help are written once: on its field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any


def option(
    default: Any,
    help: str | None = None,
    choices: Sequence[str] | None = None,
    required: bool = False,
) -> Any:
    """A config field with a default and what ``--help`` says of it (its allowed values;
    ``required``: the command line must give it, the default serves only the dataclass)."""
    metadata = {"help": help, "choices": choices, "required": required}
    return dataclasses.field(default=default, metadata=metadata)


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--field-name`` per field of the dataclass ``config_type``, with the field's
    default, the type of its annotation (``X | None``: X) and the ``help`` and ``choices``
    of :func:`option`; a ``bool`` field is a switch (``--name`` sets it; ``--no-name``
    clears it when it defaults to true)."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        flag = field.name.replace("_", "-")
        help_text = field.metadata.get("help")
        kind = _without_none(hints[field.name])
        if kind is bool and field.default:
            parser.add_argument(
                f"--no-{flag}", dest=field.name, action="store_false", help=help_text
            )
        elif kind is bool:
            parser.add_argument(f"--{flag}", action="store_true", help=help_text)
        else:
            parser.add_argument(
                f"--{flag}",
                type=kind,
                default=field.default,
                choices=field.metadata.get("choices"),
                required=field.metadata.get("required", False),
                help=help_text,
            )


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> X; any other annotation as it is."""
    if isinstance(annotation, types.UnionType):
        kinds = [k for k in typing.get_args(annotation) if k is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation
