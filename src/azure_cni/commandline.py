"""What every azure-cni command has in common: ``--version``, one ``--log-level`` flag that
refuses an unknown level, and exit codes that are an enum listed in the command's help.

``azure-cni``, ``azure-cni-operator`` and ``azure-cni-agent`` each build their parser with
``command_parser`` and describe their exit codes with an ``ExitCode`` subclass, so what the
help says and what the process returns are one definition.
"""

from __future__ import annotations

import argparse
import enum
import logging
import sys
import textwrap
from typing import TextIO

from azure_cni import __version__

#: the levels ``--log-level`` accepts (any case), quietest last
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ExitCode(enum.IntEnum):
    """Base of each command's exit codes: members are ``NAME = (code, "what it means")``."""

    description: str

    def __new__(cls, code: int, description: str = "") -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.description = description
        return member


def exit_codes_help(codes: type[ExitCode]) -> str:
    """The "exit codes" paragraph of a command's help."""
    lines = ["exit codes:"]
    lines += [textwrap.fill(code.description, width=79, initial_indent=f"  {int(code):<4}",
                            subsequent_indent=" " * 6) for code in codes]
    return "\n".join(lines)


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    return level


def command_parser(prog: str, description: str, codes: type[ExitCode], *,
                   epilog: str = "", log_level: str = "info") -> argparse.ArgumentParser:
    """A parser with ``--version``, ``--log-level`` and the exit codes at the end of the help."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="\n\n".join(part for part in (epilog, exit_codes_help(codes)) if part),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, log_level=log_level)
    return parser


def add_common_options(parser: argparse.ArgumentParser, *, log_level: str = "info") -> None:
    """``--version`` and ``--log-level`` on a command's parser."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_level(parser, log_level)


def add_log_level(parser: argparse.ArgumentParser, default: str, *,
                  subcommand: bool = False) -> None:
    """``--log-level``. On a subcommand (``subcommand=True``) it is accepted after the
    subcommand's name too, without overriding a level given before it."""
    parser.add_argument("--log-level", type=_log_level,
                        default=argparse.SUPPRESS if subcommand else default,
                        metavar="{" + ",".join(LOG_LEVELS) + "}",
                        help=f"what to log to stderr (default: {default})")


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Log ``event=... key=value`` lines at ``level`` and above to stderr."""
    logging.basicConfig(level=getattr(logging, level.upper()), format=LOG_FORMAT,
                        stream=stream or sys.stderr, force=True)
