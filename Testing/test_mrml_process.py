"""The background-process runner the Slicer module polls: progress lines, logs, crash, cancel of a whole tree."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from BraTSMambaLib.mrml.process import (PROGRESS_PREFIX, STAGES, BackgroundProcess, Progress, format_progress,
                                        parse_progress_line)


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_progress_line_round_trip():
    line = format_progress("inference", 0.5, "tile 3/6")
    assert line.startswith(PROGRESS_PREFIX)
    p = parse_progress_line("INFO " + line, Progress())
    assert (p.stage, p.fraction, p.message, p.title) == ("inference", 0.5, "tile 3/6", STAGES["inference"][1])
    # a stage without a fraction starts at the stage's share of the bar
    assert parse_progress_line(format_progress("write"), Progress()).fraction == STAGES["write"][0]
    assert parse_progress_line("plain log text", Progress()) is None
    assert parse_progress_line(PROGRESS_PREFIX + "{not json", Progress()) is None


def test_tqdm_bar_refines_current_stage():
    current = Progress("inference", STAGES["inference"][0])
    p = parse_progress_line("sliding window:  50%|#####     | 5/10 [00:01<00:01]", current)
    lo, hi = STAGES["inference"][0], STAGES["postprocess"][0]
    assert p.stage == "inference" and p.fraction == pytest.approx(lo + 0.5 * (hi - lo))


def test_output_progress_and_exit_status(tmp_path):
    argv = _script(tmp_path, f"""
        import sys
        print("hello")
        print({format_progress('preprocess', 0.2)!r}, flush=True)
        sys.stderr.write("warning on stderr\\n")
        print("bar 40%|####", end="\\r", flush=True)
        print({format_progress('done', 1.0)!r})
        sys.exit(3)
    """)
    proc = BackgroundProcess(argv, log_path=tmp_path / "log.txt")
    proc.start()
    assert proc.wait(timeout=60) == 3
    assert proc.progress.stage == "done" and proc.progress.fraction == 1.0
    assert "hello" in proc.lines and "warning on stderr" in proc.lines
    assert not any(PROGRESS_PREFIX in ln for ln in proc.lines)
    assert "warning on stderr" in proc.log_tail()
    assert "hello" in (tmp_path / "log.txt").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    argv = _script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(120)
    """)
    proc = BackgroundProcess(argv)
    proc.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    t0 = time.monotonic()
    proc.cancel()
    assert time.monotonic() - t0 < 10
    assert proc.cancelled and proc.finished and proc.returncode != 0
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived cancel"


def test_stage_lines_move_progress_when_no_json(tmp_path):
    argv = _script(tmp_path, """
        print("model tiny on cpu, loaded in 0.1 s", flush=True)
        print("case: WT 1.0 mL", flush=True)
    """)
    proc = BackgroundProcess(argv, stage_patterns=((r"^model .* loaded in", "inference"),))
    proc.start()
    assert proc.wait(timeout=60) == 0
    assert proc.progress.stage == "inference" and proc.progress.fraction == STAGES["inference"][0]


def test_json_lines_take_over_from_stage_lines(tmp_path):
    """Once a command prints JSON progress, log lines no longer move the bar (it would jump ahead)."""
    argv = _script(tmp_path, f"""
        print({format_progress('load', 0.05)!r}, flush=True)
        print("model tiny on cpu, loaded in 0.1 s", flush=True)
        import time; time.sleep(0.5)
        print({format_progress('preprocess', 0.15)!r}, flush=True)
    """)
    proc = BackgroundProcess(argv, stage_patterns=((r"^model .* loaded in", "inference"),))
    proc.start()
    seen = []
    while not proc.finished:
        proc.poll()
        seen.append(proc.progress.fraction)
        time.sleep(0.01)
    proc.poll()
    assert proc.progress == Progress("preprocess", 0.15, "")
    assert seen == sorted(seen) and max(seen) <= 0.15
