"""Command-line help that says every option's default, for ``imagesvc`` and ``imagectl``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def say_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """End each option's help, in ``parser`` and all its subcommands, with its default
    (or "required"), unless the help already says it."""
    for each in all_parsers(parser):
        for action in each._actions:
            if not action.option_strings or action.default == argparse.SUPPRESS:
                continue
            text = action.help or ""
            if "default" in text or "required" in text:
                continue
            tail = "required" if action.required else f"default: {_shown(action.default)}"
            action.help = f"{text} ({tail})" if text else tail
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from all_parsers(child)


def _shown(default: object) -> str:
    if default is False:
        return "off"
    if default is None:
        return "none"
    if default == "" or default == []:
        return "none"
    return str(default).replace("%", "%%")
