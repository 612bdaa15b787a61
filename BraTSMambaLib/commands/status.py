"""`brats-mamba status`: live view of a training run's status.jsonl."""
from __future__ import annotations

import argparse

NAME = "status"
HELP = "show a training run's per-epoch status (losses, pseudo-Dice WT/TC/ET, epoch time); --follow to watch"
DESCRIPTION = """\
Reads RUN_DIR/status.jsonl (written by the trainers after every epoch; RUN_DIR may also be a
results folder holding several folds) and prints one row per epoch. --follow redraws as new
epochs arrive until the run has written checkpoint_final.pth (Ctrl-C stops watching).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="fold folder (or a folder above several)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep watching")
    parser.add_argument("--last", type=int, default=20, help="rows to show (default 20; 0 = all)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between checks with --follow")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.training.status import find_status_files, format_table, read_status

    root = Path(args.run_dir)
    if not root.is_dir():
        raise BraTSInputError(f"{root}: not a folder")
    shown = None
    while True:
        files = find_status_files(root)
        if args.json:
            print(json.dumps({str(f.parent): read_status(f) for f in files}, indent=2))
            return 0
        text = []
        done = bool(files)
        for f in files:
            recs = read_status(f)
            final = (f.parent / "checkpoint_final.pth").is_file()
            done &= final
            head = f"{f.parent}  ({len(recs)} epochs{', finished' if final else ''})"
            text.append(head + "\n" + format_table(recs, args.last or None))
        out = "\n\n".join(text) if text else f"{root}: no status.jsonl yet"
        if out != shown:
            print(out, flush=True)
            shown = out
        if not args.follow or done:
            return 0
        time.sleep(args.interval)
