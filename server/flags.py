"""``danet-serve`` flags generated from the ``Settings`` model: one field, one flag, one ``DANET_*`` variable.

Every field ``some_name`` becomes ``--some-name`` with the field's description as help text, its default
and its environment variable. List fields are repeatable and also answer to their singular name
(``--model`` for ``models``); booleans are ``--flag/--no-flag``; ``Literal`` fields list their choices;
optional non-text fields take ``none``. Flags parse to strings and the ``Settings`` model validates them,
so a bad value is reported the same way whether it came from a flag or a variable. A flag that is not
given is absent from the result, which leaves the variable (then the default) in charge.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

_LISTS = (list, tuple, set, frozenset)
_NONE = "none"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    return f"{settings_cls.model_config.get('env_prefix', '')}{field}".upper()


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return annotation, False


def takes_none_word(annotation: Any) -> bool:
    """Whether ``none`` means None for a field of this type: optional, and neither text nor a list (for
    text ``none`` is a value like any other)."""
    kind, optional = _unwrap_optional(annotation)
    return optional and kind not in (str, SecretStr) and _list_item(kind) is None


def none_word(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == _NONE


def _list_item(annotation: Any) -> Any | None:
    """The item type of a list-like annotation, else None."""
    if get_origin(annotation) in _LISTS:
        args = get_args(annotation)
        return args[0] if args else str
    return None


def _metavar(field: str, kind: Any) -> str:
    if kind is Path:
        return "DIR" if field.endswith(("_dir", "_repository")) else "PATH"
    if kind is int:
        return "N"
    if kind is float:
        return "SECONDS" if field.endswith("_s") else "NUMBER"
    last = field.rsplit("_", 1)[-1]
    return (last[:-1] if last.endswith("s") else last).upper()


def _default_text(info: FieldInfo) -> str | None:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return None
    else:
        value = info.default
    if value is None:
        return _NONE
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _LISTS):
        return ",".join(str(v) for v in value) or "(empty)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help(settings_cls: type[BaseSettings], name: str, info: FieldInfo, repeatable: bool) -> str:
    text = (info.description or "").strip().rstrip(".")
    extras = []
    if repeatable:
        extras.append("repeatable")
    default = _default_text(info)
    if default is not None:
        extras.append(f"default {default}")
    extras.append(f"env {env_name(settings_cls, name)}")
    return f"{text} [{'; '.join(extras)}]".strip().replace("%", "%%")


def _none_or(value: str) -> str | None:
    return None if none_word(value) else value


def add_settings_flags(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings], *, title: str = "settings"
) -> None:
    """Add one flag per field of ``settings_cls`` (see the module docstring)."""
    group = parser.add_argument_group(title)
    taken = {flag_name(name) for name in settings_cls.model_fields}
    for name, info in settings_cls.model_fields.items():
        flag = flag_name(name)
        kind, optional = _unwrap_optional(info.annotation)
        item = _list_item(kind)
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if item is not None:
            names = [flag]
            singular = flag[:-1] if flag.endswith("s") else None
            if singular and singular not in taken:
                names.append(singular)
                taken.add(singular)
            group.add_argument(
                *names,
                action="append",
                metavar=_metavar(name, item),
                help=_help(settings_cls, name, info, repeatable=True),
                **common,
            )
        elif kind is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                help=_help(settings_cls, name, info, repeatable=False),
                **common,
            )
        elif get_origin(kind) is Literal:
            choices = [str(choice) for choice in get_args(kind)] + ([_NONE] if optional else [])
            group.add_argument(
                flag,
                choices=choices,
                type=_none_or if takes_none_word(info.annotation) else str,
                help=_help(settings_cls, name, info, repeatable=False),
                **common,
            )
        else:
            group.add_argument(
                flag,
                metavar=_metavar(name, kind),
                type=_none_or if takes_none_word(info.annotation) else str,
                help=_help(settings_cls, name, info, repeatable=False),
                **common,
            )


def overrides_from(namespace: argparse.Namespace, settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The settings given as flags (keyword arguments for ``settings_cls``, which beat the environment)."""
    return {name: value for name, value in vars(namespace).items() if name in settings_cls.model_fields}


def _where(settings_cls: type[BaseSettings], field: str) -> str:
    return f"{field} ({flag_name(field)} / {env_name(settings_cls, field)})"


def explain(exc: ValidationError, settings_cls: type[BaseSettings]) -> str:
    """A validation error in one line, naming each offending flag and variable (secrets not echoed)."""
    problems = []
    fields: Mapping[str, FieldInfo] = settings_cls.model_fields
    for error in exc.errors():
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        field = str(loc[0]) if loc else ""
        if field in fields:
            shown = ""
            if "input" in error and not _is_secret(fields[field]):
                shown = f" (got {_short(error['input'])})"
            problems.append(f"{_where(settings_cls, field)}: {message}{shown}")
        else:
            problems.append(message)
    return "; ".join(problems)


def _is_secret(info: FieldInfo) -> bool:
    kind, _ = _unwrap_optional(info.annotation)
    return kind is SecretStr


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def every_flag(settings_cls: type[BaseSettings]) -> Iterable[str]:
    """The primary flag of each field, in field order."""
    return (flag_name(name) for name in settings_cls.model_fields)
