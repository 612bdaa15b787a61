"""`brats-mamba` entry point: one sub-command per module in `BraTSMambaLib.commands`.

Each command module defines `NAME`, `HELP`, `configure(parser)` and `run(args) -> int`.
Errors the user can fix (`BraTSInputError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from BraTSMambaLib import __version__
from BraTSMambaLib.errors import BraTSInputError

#: Command modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "segment",
    "check",
    "evaluate",
    "phantom",
    "models",
    "doctor",
    "import_nnunet",
    "convert",
    "plan",
    "train",
    "status",
    "compare",
)


def _available_commands() -> list:
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"BraTSMambaLib.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"BraTSMambaLib.commands.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-mamba",
        description=(
            "Segment brain tumours in multiparametric MRI (T1, T1ce, T2, FLAIR) into whole tumour (WT), "
            "tumour core (TC) and enhancing tumour (ET) with Mamba state-space networks; check cases, "
            "evaluate segmentations, train and compare models."
        ),
        epilog="Run 'brats-mamba COMMAND --help' for a command's options. Exit status: 0 ok, 1 failure, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _available_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except BraTSInputError as e:
        print(f"brats-mamba {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brats-mamba {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
