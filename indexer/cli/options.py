"""Command-line options generated from a pydantic model, so that a setting, its default and its
help are written once, in the model.

Rules, walking the model's fields in order:
  - field ``batch_size`` -> ``--batch-size``; help is the field's description and its default;
  - a nested model contributes its own fields, their flags prefixed with the field's name
    (``--augmentation-hue``), or with the field's ``cli_prefix`` when it sets one ("" keeps the
    nested names as they are);
  - ``bool`` -> ``--x`` / ``--no-x``; a ``Literal`` -> choices; a ``list`` -> one or more values;
    ``X | None`` -> an optional ``X``; a field without default -> a required option;
  - ``json_schema_extra`` may name the help section (``cli_group``) and the metavar
    (``cli_metavar``).
Options that are not given stay out of the parsed values, so the model's own defaults apply and
argparse holds no default of its own. pydantic-settings' CLI source was considered; its nested
options are dotted (``--augmentation.hue``), which would rename the options users already know.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from model.errors import HistosearchError

# Parsed values live under this prefix in the namespace, apart from the command's own options.
DEST_PREFIX = "option:"
DEFAULT_GROUP = "options"
ModelT = TypeVar("ModelT", bound=BaseModel)


class OptionError(HistosearchError, ValueError):
    """Option values that the model refuses; the message names the options."""


@dataclass(frozen=True)
class ModelOption:
    """One command-line option and the model field it sets."""

    path: tuple[str, ...]  # field names from the root model, e.g. ("augmentation", "hue")
    flag: str
    field: FieldInfo
    group: str

    @property
    def dest(self) -> str:
        # By flag, not by field path: two configs of one command (train on images, train on
        # features) share the options they both have (--data, --epochs, --seed ...).
        return DEST_PREFIX + self.flag


@dataclass(frozen=True)
class Shorthand:
    """An option that sets several fields at once (kept for names users already know); the
    options of those fields, when given too, take precedence."""

    flag: str
    targets: tuple[tuple[str, ...], ...]
    value_type: type
    help: str

    @property
    def dest(self) -> str:
        return DEST_PREFIX + "shorthand:" + self.flag


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        remaining = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(remaining) == 1:
            return remaining[0]
    return annotation


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = _without_none(field.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def model_options(
    model: type[BaseModel],
    path: tuple[str, ...] = (),
    prefix: str = "",
    group: str = DEFAULT_GROUP,
) -> list[ModelOption]:
    """The options of every (nested) field of ``model``, in field order."""
    options: list[ModelOption] = []
    for name, field in model.model_fields.items():
        extra = _extra(field)
        field_group = str(extra.get("cli_group", group))
        nested = _nested_model(field)
        if nested is not None:
            nested_prefix = str(extra.get("cli_prefix", name.replace("_", "-") + "-"))
            options += model_options(nested, (*path, name), prefix + nested_prefix, field_group)
        else:
            flag = "--" + prefix + name.replace("_", "-")
            options.append(ModelOption((*path, name), flag, field, field_group))
    flags = [option.flag for option in options]
    duplicated = sorted({flag for flag in flags if flags.count(flag) > 1})
    if duplicated:
        raise ValueError(f"{model.__name__} gives several fields the options {duplicated}")
    return options


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)


def option_help(option: ModelOption) -> str:
    """The field's description with its default; '%' escaped for argparse."""
    description = option.field.description or ""
    if option.field.is_required():
        text = f"{description} (required)"
    else:
        default = option.field.get_default(call_default_factory=True)
        shown = default is not None and default != ""
        text = f"{description} (default: {_shown(default)})" if shown else description
    return text.replace("%", "%%")


def _argument_settings(option: ModelOption) -> dict[str, Any]:
    annotation = _without_none(option.field.annotation)
    settings: dict[str, Any] = {
        "dest": option.dest,
        "default": argparse.SUPPRESS,
        "help": option_help(option),
    }
    if option.field.is_required():
        settings["required"] = True
    if annotation is bool:
        settings["action"] = argparse.BooleanOptionalAction
        return settings
    if get_origin(annotation) in (list, tuple, Sequence):
        settings["nargs"] = "+"
        (annotation, *_) = get_args(annotation)
    if get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        settings["choices"] = choices
        settings["type"] = type(choices[0])
    else:
        settings["metavar"] = _extra(option.field).get("cli_metavar", option.path[-1].upper())
        if annotation in (int, float, str):
            settings["type"] = annotation
    return settings


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    shorthands: Sequence[Shorthand] = (),
    *,
    variant: str | None = None,
) -> list[ModelOption]:
    """Add one option per field of ``model`` to ``parser``, in help sections by ``cli_group``.

    A second config of the same command (``variant``, e.g. "--source features") adds only the
    options the parser lacks; one it shares gets the variant's help (and default) appended, and
    the parsed value reaches both configs.
    """
    options = model_options(model)
    groups: dict[str, argparse._ArgumentGroup] = {
        str(group.title): group for group in parser._action_groups
    }
    for option in options:
        existing = parser._option_string_actions.get(option.flag)
        if existing is not None and variant is not None:
            existing.help = f"{existing.help}; {variant}: {option_help(option)}"
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        groups[option.group].add_argument(option.flag, **_argument_settings(option))
    paths = {option.path: option for option in options}
    for shorthand in shorthands:
        group = groups.get(paths[shorthand.targets[0]].group, parser)
        group.add_argument(
            shorthand.flag,
            dest=shorthand.dest,
            type=shorthand.value_type,
            metavar=shorthand.flag.removeprefix("--").split("-")[-1].upper(),
            default=argparse.SUPPRESS,
            help=shorthand.help.replace("%", "%%"),
        )
    return options


def foreign_options(
    args: argparse.Namespace, own: Sequence[ModelOption], others: Sequence[ModelOption]
) -> list[str]:
    """The flags given on the command line that belong to ``others`` (another config of the
    same command) and not to ``own``: they would be ignored, so the caller refuses them."""
    parsed = vars(args)
    mine = {option.flag for option in own}
    return sorted(
        {option.flag for option in others if option.dest in parsed and option.flag not in mine}
    )


def _set(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        values = values.setdefault(name, {})
    values[path[-1]] = value


def given_values(
    args: argparse.Namespace, options: Sequence[ModelOption], shorthands: Sequence[Shorthand] = ()
) -> dict[str, Any]:
    """The values of the options given on the command line, nested like the model's fields."""
    parsed = vars(args)
    values: dict[str, Any] = {}
    for shorthand in shorthands:
        if shorthand.dest in parsed:
            for target in shorthand.targets:
                _set(values, target, parsed[shorthand.dest])
    for option in options:
        if option.dest in parsed:
            _set(values, option.path, parsed[option.dest])
    return values


def _flag_of(location: tuple[int | str, ...], options: Sequence[ModelOption]) -> str:
    names = tuple(str(part) for part in location)
    for option in options:
        if names[: len(option.path)] == option.path:
            return option.flag
    return ".".join(names) or "settings"


def _given(problem: Any) -> str:
    """What was given, for a problem with one option; the project's own messages (value_error)
    and whole-model problems say it themselves."""
    if problem["type"] in ("missing", "value_error") or not problem["loc"]:
        return ""
    return f" (got {problem['input']!r})"


def validated_model(
    model: type[ModelT],
    args: argparse.Namespace,
    options: Sequence[ModelOption],
    shorthands: Sequence[Shorthand] = (),
) -> ModelT:
    """``model`` validated from the given options; OptionError names each refused option."""
    try:
        return model.model_validate(given_values(args, options, shorthands))
    except ValidationError as error:
        problems = [_problem(problem, options) for problem in error.errors()]
        raise OptionError("invalid options:\n  " + "\n  ".join(problems)) from None


def _problem(problem: Any, options: Sequence[ModelOption]) -> str:
    """One refused option, named by its flag; a whole-model rule's message names its own."""
    message = str(problem["msg"]).removeprefix("Value error, ")
    if not problem["loc"]:
        return message
    return f"{_flag_of(problem['loc'], options)}: {message}" + _given(problem)
