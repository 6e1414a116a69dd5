"""The ``vidprop`` command line: one sub-command per module in this package.

Each sub-command module has ``register(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. :func:`main` maps exceptions to exit codes: 0 success, 2 bad input
(:class:`~vidprop.errors.InputError`), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from vidprop import __version__
from vidprop.errors import VidpropError
from vidprop.log import set_verbosity

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

logger = logging.getLogger(__name__)

# Registry of sub-commands: name -> module under vidprop.cli.
SUBCOMMANDS: dict[str, str] = {
    "propagate": "vidprop.cli.propagate",
    "davis": "vidprop.cli.davis",
    "evaluate": "vidprop.cli.evaluate",
    "extract": "vidprop.cli.extract",
    "sweep": "vidprop.cli.sweep",
    "convert-adm": "vidprop.cli.convert_adm",
}


def _available_subcommands():
    for name, module_name in SUBCOMMANDS.items():
        try:
            yield name, importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="vidprop",
        description="Propagate video object masks with diffusion features (DIFT) and score them with DAVIS J&F.",
    )
    parser.add_argument("--version", action="version", version=f"vidprop {__version__}")
    _add_verbosity(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available_subcommands():
        sub = module.register(subparsers)
        _add_verbosity(sub, default=argparse.SUPPRESS)  # `vidprop propagate ... -v` too; SUPPRESS keeps a -v given before
        sub.set_defaults(_run=module.run)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", default=default, help="log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=default, help="log warnings and errors only")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    level = "DEBUG" if args.verbose else "WARNING" if args.quiet else None
    set_verbosity(level)
    try:
        return int(args._run(args) or 0)
    except VidpropError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception:  # noqa: BLE001 - the CLI's last line of defence
        logger.exception("internal error")
        return 1
