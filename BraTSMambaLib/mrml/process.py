"""Run a command in the background, read its output and progress, and cancel its whole process tree.

Qt-free: the Slicer module polls `BackgroundProcess.poll()` from a `qt.QTimer`, scripts and tests
poll it in a loop. Progress travels as machine-readable lines on the command's stdout/stderr:

    @@brats-mamba-progress {"stage": "inference", "fraction": 0.42, "message": "tile 12/28"}

The format, STAGES and the parser live in `BraTSMambaLib.progress` (shared with the CLI, which
prints these lines under `BRATSMAMBA_PROGRESS=json`); they are re-exported here. For commands that
print no JSON lines, tqdm bars ("45%|###") refine the current stage and `stage_patterns` mark stages.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from BraTSMambaLib.progress import (PROGRESS_PREFIX, STAGES, Progress, format_progress,  # noqa: F401 (re-exported)
                                    parse_progress_line)


def kill_process_tree(pid: int, *, grace_s: float = 2.0, root_alive: Callable[[], bool] | None = None) -> None:
    """Stop a process and every process it started: the process group on POSIX, taskkill /T on Windows.

    Descendants are found with psutil when it is importable (SlicerMONAIAuto3DSeg relies on it inside
    Slicer, since killing PythonSlicer alone "would only stop the launcher"), which also catches
    children that left the group; without it the process group (POSIX) or taskkill /T (Windows) does. `root_alive` tells whether `pid` still runs when the caller is its
    parent (an unreaped child looks alive to signals; Popen.poll() knows better).
    """
    def alive(p: int) -> bool:
        return root_alive() if (p == pid and root_alive is not None) else _alive(p)

    pids = [pid]
    try:
        import psutil

        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # psutil missing, or the process already gone
        pass
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(os.getpgid(pid), sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        if not any(alive(p) for p in pids):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); it is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class BackgroundProcess:
    """A command running in its own process group, with its output collected by a reader thread."""

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike | None = None
    log_path: str | os.PathLike | None = None
    progress: Progress = field(default_factory=Progress)
    lines: list[str] = field(default_factory=list)
    cancelled: bool = False
    #: (regex, stage) pairs: a matching output line moves progress to that stage (for commands without JSON lines)
    stage_patterns: Sequence[tuple[str, str]] = ()
    _proc: subprocess.Popen | None = None
    _json_seen: bool = False
    _pending: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Launch the command (stdout and stderr merged, unbuffered Python output)."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
                  if sys.platform == "win32" else {"start_new_session": True})
        self._proc = subprocess.Popen(list(map(str, self.argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=self.cwd, **kwargs)
        self._thread = threading.Thread(target=self._read, name="brats-mamba-output", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _read(self) -> None:
        log = open(self.log_path, "w", encoding="utf-8") if self.log_path else None
        buf = b""
        try:
            while True:
                chunk = self._proc.stdout.read1(4096) if hasattr(self._proc.stdout, "read1") else self._proc.stdout.read(1)
                if not chunk:
                    break
                buf += chunk
                parts = re.split(rb"\r\n|\n|\r", buf)
                buf = parts.pop()
                self._push([p.decode("utf-8", "replace") for p in parts], log)
            if buf:
                self._push([buf.decode("utf-8", "replace")], log)
        finally:
            if log:
                log.close()

    def _push(self, texts: list[str], log) -> None:
        with self._lock:
            self._pending.extend(texts)
        if log:
            log.write("".join(t + "\n" for t in texts))
            log.flush()

    def poll(self) -> list[str]:
        """New output lines since the last call (progress lines update `progress` and are kept out)."""
        with self._lock:
            new, self._pending = self._pending, []
        shown = []
        for line in new:
            is_json = PROGRESS_PREFIX in line
            self._json_seen |= is_json
            p = parse_progress_line(line, self.progress)
            if p is None and not self._json_seen:  # JSON lines, once seen, alone drive the progress
                p = self._stage_from_pattern(line)
            if p is not None:
                self.progress = p
            if not is_json and line.strip():
                shown.append(line)
        self.lines.extend(shown)
        return shown

    def _stage_from_pattern(self, line: str) -> Progress | None:
        for pattern, stage in self.stage_patterns:
            if re.search(pattern, line):
                start = STAGES.get(stage, (self.progress.fraction, ""))[0]
                return Progress(stage, max(start, self.progress.fraction), "")
        return None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def finished(self) -> bool:
        """Exited and all its output read."""
        return self._proc is not None and self._proc.poll() is not None and not (self._thread and self._thread.is_alive())

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def cancel(self) -> None:
        """Kill the command and everything it started."""
        if self._proc is None:
            return
        self.cancelled = True
        if self._proc.poll() is None:
            kill_process_tree(self._proc.pid, root_alive=lambda: self._proc.poll() is None)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self._thread:
            self._thread.join(timeout=5)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int | None:
        """Poll until the command ends (or `timeout` seconds pass); returns its exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                break
            self.poll()
            time.sleep(interval)
        self.poll()
        return self.returncode

    def log_tail(self, n: int = 60) -> str:
        """The last `n` output lines, for showing a crash in the UI."""
        self.poll()
        return "\n".join(self.lines[-n:])


class JobControl:
    """Cancel / abort / wait for a job that runs a `BackgroundProcess` and is advanced by `poll()`.

    Shared by the segmentation job and the training-module jobs; a subclass provides `process`,
    `done`, `cancelled`, `error`, `_failure(returncode)` and, where it has them, `_load_results()`
    (results to read once the process succeeded) and `_cleanup()` (temporary files).
    """

    def poll(self) -> bool:
        """Read new output; when the process has ended, load the results (or record the error). True when done."""
        if self.done:
            return True
        if self.process is None:
            raise RuntimeError(f"{type(self).__name__}.poll() before start()")
        self.process.poll()
        if not self.process.finished:
            return False
        try:
            if self.process.cancelled:
                self.error = "Cancelled."
            elif self.process.returncode != 0:
                self.error = f"{self._failure(self.process.returncode)}\n" + self.process.log_tail()
            else:
                self._load_results()
        except Exception as e:  # a result that cannot be loaded is a failure the user must see
            self.error = f"Could not load the results: {e}\n" + self.process.log_tail()
        finally:
            self.done = True
            self._cleanup()
        return True

    def _failure(self, returncode: int) -> str:
        """First line of the error when the process exited with `returncode`."""
        return f"The job failed (exit status {returncode})."

    def _load_results(self) -> None:
        """Read what the process produced (nothing by default)."""

    def cancel(self) -> None:
        """Kill the CLI and every process it started (data-loader workers, DDP ranks); the scene is untouched."""
        if self.process is not None and not self.done:
            self.cancelled = True
            self.process.cancel()
            self.poll()

    def abort(self, reason: str) -> None:
        """Stop the job after an error outside the process (kill it, record `reason`, clean up)."""
        if self.process is not None and not self.process.finished:
            self.process.cancel()
        self.error = self.error or reason
        self.done = True
        self._cleanup()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (scripts, tests); True on success. A timeout cancels the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                self.error = f"Timed out after {timeout:g} s."
                break
            time.sleep(0.1)
        return self.error is None

    def _cleanup(self) -> None:
        """Remove the job's temporary files (none by default)."""
