"""`orchestrator up`'s children: started in one process group of their own, restarted within bounds,
stopped together.

Why a group of their own: a terminal's signals (Ctrl-C's SIGINT, SIGHUP when it closes) go to its
foreground group, which is `up` alone; `up` then stops its children in order (the web, worker and beat
first, the embedded Redis they use last) and sweeps the group, so that nothing is left serving, or
accepting events that nothing would apply, behind a dead parent. Each child is also set to get SIGTERM
should `up` itself die (PR_SET_PDEATHSIG), even by SIGKILL.

Restarts: a child that exits while the stack runs (a Celery worker exits when Redis goes away for a
moment) is started again, unless it already did so RESTART_LIMIT times within RESTART_WINDOW_SECONDS:
then it is a crash loop, a broken setup rather than a passing fault, and the whole stack stops with a
non-zero exit. A child that does not stop cleanly when the stack stops (it exits with an error, or has
to be killed after STOP_GRACE_SECONDS) makes the exit non-zero too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable

import click

RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
STOP_GRACE_SECONDS = 15.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def say(message: str) -> None:
    """A line on stderr that cannot stop a shutdown: after SIGHUP the terminal may be gone (EIO)."""
    with contextlib.suppress(OSError):
        click.echo(message, err=True)


def _dies_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child, between fork and exec
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call above: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Restarts:
    """Recent restarts per process: a crash is restarted, a crash loop stops the stack."""

    def __init__(self, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW_SECONDS) -> None:
        self.limit, self.window = limit, window
        self._times: dict[str, list[float]] = {}

    def allow(self, name: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._times.get(name, []) if now - t < self.window] + [now]
        self._times[name] = recent
        return len(recent) <= self.limit


class Children:
    """The stack's processes, by name, in one process group (the first child's)."""

    def __init__(self, restarts: Restarts | None = None) -> None:
        self.restarts = restarts or Restarts()
        self.pgid: int | None = None
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.commands[name] = (argv, env)
        preexec = _dies_with(os.getpid())
        proc = None
        if self.pgid is not None:
            try:
                proc = subprocess.Popen(argv, env=env, process_group=self.pgid, preexec_fn=preexec)
            except PermissionError:  # every member of the group had exited: the group is gone
                proc = None
        if proc is None:  # the first child leads a new group
            proc = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=preexec)
            self.pgid = proc.pid
        self.procs[name] = proc
        return proc

    def check(self) -> int:
        """Restart any child that exited; a non-zero exit code when one is in a crash loop."""
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if not self.restarts.allow(name):
                say(f"{name} exited with {code}, its exit number {self.restarts.limit + 1} within "
                    f"{self.restarts.window:.0f} s: a crash loop; stopping the stack")
                return code if code > 0 else 1
            say(f"{name} exited with {code}; restarting it")
            self.start(name, *self.commands[name])
        return 0

    def stop(self, last: str | None = None) -> bool:
        """Stop every child (`last` after the others: what they use), then anything left in the group.
        True when each stopped cleanly (exit 0, or by our SIGTERM) within STOP_GRACE_SECONDS."""
        first = [p for name, p in self.procs.items() if name != last]
        clean = self._stop_each(first)
        if last in self.procs:
            clean = self._stop_each([self.procs[last]]) and clean
        self._sweep_group()
        return clean

    def _stop_each(self, procs: list[subprocess.Popen[bytes]]) -> bool:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        names = {id(p): n for n, p in self.procs.items()}
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        clean = True
        for proc in procs:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{names[id(proc)]} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
                proc.kill()
                proc.wait()
                clean = False
                continue
            if code not in (0, -signal.SIGTERM):
                say(f"{names[id(proc)]} exited with {code} while stopping")
                clean = False
        return clean

    def _sweep_group(self) -> None:
        """Kill what the children left in the group (a pool process whose parent was killed)."""
        if self.pgid is None:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.05)


class StopRequest:
    """Which of STOP_SIGNALS asked the stack to stop, if any; installed as their handler."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None
