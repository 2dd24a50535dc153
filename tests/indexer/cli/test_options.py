import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from indexer.cli.options import OptionError, add_model_options, validated_model


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float = Field(default=0.5, gt=0, description="a rate")
    mode: Literal["fast", "slow"] = Field(default="fast", description="a mode")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a name")
    sizes: list[int] = Field(default_factory=lambda: [1, 2], description="some sizes")
    limit: int | None = Field(default=None, description="an optional limit")
    verbose: bool = Field(default=False, description="talk more")
    inner: Inner = Field(default_factory=Inner, description="nested settings")


def _parse(*flags: str) -> Outer:
    parser = argparse.ArgumentParser()
    options = add_model_options(parser, Outer)
    return validated_model(Outer, parser.parse_args(list(flags)), options)


def test_flags_come_from_field_names_and_nested_fields_are_prefixed() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser, Outer)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert flags >= {"--name", "--sizes", "--limit", "--verbose", "--no-verbose"}
    assert flags >= {"--inner-rate", "--inner-mode"}
    help_text = " ".join(parser.format_help().split())
    assert "a rate (default: 0.5)" in help_text and "some sizes (default: 1 2)" in help_text
    assert "a name (required)" in help_text and "{fast,slow}" in help_text


def test_options_not_given_take_the_model_defaults() -> None:
    assert _parse("--name", "x") == Outer(name="x")


def test_given_options_are_converted_and_nested() -> None:
    parsed = _parse("--name", "x", "--sizes", "3", "--limit", "4", "--verbose", "--inner-rate", "2")
    assert parsed == Outer(name="x", sizes=[3], limit=4, verbose=True, inner=Inner(rate=2.0))


def test_a_missing_required_option_is_refused_by_argparse() -> None:
    with pytest.raises(SystemExit):
        _parse()


def test_a_refused_value_names_its_option_and_the_value() -> None:
    with pytest.raises(OptionError, match=r"--inner-rate: Input should be greater than 0 \(got -1"):
        _parse("--name", "x", "--inner-rate", "-1")


def test_two_fields_with_one_flag_are_refused() -> None:
    class Clash(BaseModel):
        inner_rate: float = Field(default=1.0, description="clashes with inner.rate")
        inner: Inner = Field(default_factory=Inner, description="nested settings")

    with pytest.raises(ValueError, match="--inner-rate"):
        add_model_options(argparse.ArgumentParser(), Clash)
