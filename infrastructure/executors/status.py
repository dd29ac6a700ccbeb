"""The normalised status every executor reports, so that one diagnosis rule works everywhere.

Each `get_status` item keeps its backend's own fields and gains these, with the same names
and meanings on Docker, Kubernetes and OCI:

  state           the backend's state word (`running` means running on all of them)
  up_seconds      seconds since the current instance started; 0 when it does not run
  seconds_since_crash  0 while down, the uptime of a restarted instance, None if it never
                  stopped (rules about crashes read this one)
  exit_code       the last termination's exit code, or None
  signal          the signal that ended it (an exit code above 128), e.g. SIGKILL
  exit_meaning    the exit code explained: 137 with and without an OOM kill, 139, 143, 127...
  oom_killed      whether the kernel's OOM killer ended it
  restart_count   how many times the platform restarted it
  healthy         the health check's (liveness probe's) verdict; None without a check
  ready           readiness (Kubernetes); None where the backend has no such notion
  waiting_reason  why it does not run: CrashLoopBackOff, ImagePullBackOff, Unschedulable...
  message         the platform's message about it (the waiting or termination message)
  probe_output    the last failing health check or probe's output

`get_metrics` items gain `cpu_percent` (of the CPU limit, or of one core without a limit)
and `memory_percent` (of the memory limit; None without a limit).
"""

from __future__ import annotations

import signal as signals
from typing import Any

# Exit codes that mean the same thing whatever the program (shells and runtimes agree).
_EXIT_MEANINGS = {
    0: "exited normally (code 0)",
    1: "the program exited with an error (code 1)",
    2: "the program exited with a usage or configuration error (code 2)",
    125: "the container runtime could not run the command (code 125)",
    126: "the command was found but could not be executed (code 126: permission or format)",
    127: "the command was not found (code 127)",
    128: "the container runtime could not start the command (code 128: a start error)",
}

_SIGNAL_MEANINGS = {
    "SIGKILL": "killed by SIGKILL",
    "SIGTERM": "terminated by SIGTERM (stopped by the platform or a person)",
    "SIGSEGV": "crashed with a segmentation fault (SIGSEGV)",
    "SIGABRT": "aborted (SIGABRT, often a failed assertion or a runtime abort)",
    "SIGINT": "interrupted (SIGINT)",
    "SIGBUS": "crashed with a bus error (SIGBUS)",
    "SIGFPE": "crashed with an arithmetic error (SIGFPE)",
    "SIGILL": "crashed on an illegal instruction (SIGILL)",
    "SIGHUP": "ended by SIGHUP",
    "SIGPIPE": "ended by SIGPIPE (wrote to a closed pipe or socket)",
}


_RUNNING = ("running", "Running", None)


def exit_signal(exit_code: int | None) -> str | None:
    """The signal behind an exit code of 128 + N (the shell's and the runtimes' convention)."""
    if exit_code is None or not 128 < exit_code < 128 + 65:
        return None
    try:
        return signals.Signals(exit_code - 128).name
    except ValueError:
        return None


def exit_meaning(exit_code: int | None, oom_killed: bool) -> str | None:
    """A person's reading of an exit code; 137 says whether the OOM killer sent the SIGKILL."""
    if exit_code is None:
        return None
    name = exit_signal(exit_code)
    if name == "SIGKILL":
        if oom_killed:
            return f"killed by the kernel's OOM killer (SIGKILL, code {exit_code})"
        return (
            f"killed by SIGKILL (code {exit_code}) but not by the OOM killer: a forced stop,"
            " a stop timeout after SIGTERM, or a kill from outside"
        )
    if name is not None:
        return f"{_SIGNAL_MEANINGS.get(name, f'ended by {name}')} (code {exit_code})"
    return _EXIT_MEANINGS.get(exit_code, f"the program exited with code {exit_code}")


def normalised(
    *,
    state: str | None,
    exit_code: int | None,
    oom_killed: bool,
    restart_count: int,
    up_seconds: float | None = None,
    healthy: bool | None = None,
    ready: bool | None = None,
    waiting_reason: str | None = None,
    message: str | None = None,
    probe_output: str | None = None,
) -> dict[str, Any]:
    """The normalised fields of one status item (see the module's docstring)."""
    # Down after it ran and ended (an exit, a kill, a restart), not merely not started yet
    # (a pod being created or pulled, a container created but never run).
    ended = bool(restart_count) or oom_killed or (exit_code is not None and exit_code != 0)
    ended = ended or (exit_code == 0 and state in ("exited", "terminated", "dead", "inactive"))
    return {
        "state": state,
        # 0 when it does not run: "up less than N seconds" then covers "down" too.
        "up_seconds": round(up_seconds)
        if up_seconds is not None
        else (None if state in _RUNNING else 0),
        # How long it has run since it last ended: 0 while down after it ran, its uptime once
        # restarted, None if it never ended (still starting, or running since it started).
        "seconds_since_crash": (0 if ended else None)
        if state not in _RUNNING
        else (round(up_seconds) if up_seconds is not None and restart_count else None),
        "exit_code": exit_code,
        "signal": exit_signal(exit_code),
        "exit_meaning": exit_meaning(exit_code, oom_killed),
        "oom_killed": bool(oom_killed),
        "restart_count": int(restart_count or 0),
        "healthy": healthy,
        "ready": ready,
        "waiting_reason": waiting_reason or None,
        "message": message or None,
        "probe_output": probe_output or None,
    }


def percent(used: float | None, limit: float | None) -> float | None:
    if used is None or not limit:
        return None
    return round(100.0 * used / limit, 1)
