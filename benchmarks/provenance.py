"""Where a benchmark result came from: machine, versions, commit, command, date.

One place for the run metadata every benchmark script writes beside its results,
so that every results file states them the same way.

Examples:
  >>> from benchmarks import provenance
  >>> provenance.command("benchmarks.pinn", ["--seeds", "3", "--methods", "a,b(x=1)"])
  "python -m benchmarks.pinn --seeds 3 --methods 'a,b(x=1)'"
  >>> sorted(provenance.versions())
  ['flax', 'git', 'jax', 'jaxlib', 'optax', 'optax_invloss']
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (rounded), where the OS reports them."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Backend, device, CPU, core count, Python and the load average now."""
    device = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if load_average() is not None:
        info["load_average_at_start"] = load_average()
    return info


def git_commit() -> str:
    """``git describe --always --dirty`` of the repository, or ``"unknown"``."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    """Versions of jax, jaxlib, optax, flax and this library, and the git commit."""
    import flax
    import jaxlib
    import optax

    import optax_invloss

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "optax_invloss": optax_invloss.__version__,
        "git": git_commit(),
    }


def command(module: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that reruns ``python -m module`` with ``argv``.

    ``argv`` defaults to the process's own arguments; each is quoted for the
    shell where it needs it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *argv])


def now() -> str:
    """The date and time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def stamp(module: str, argv: Sequence[str] | None = None) -> dict:
    """``{"command", "date", "machine", "versions"}`` for a run starting now."""
    return {
        "command": command(module, argv),
        "date": now(),
        "machine": machine(),
        "versions": versions(),
    }


def describe(meta: dict) -> str:
    """One line naming the machine and versions of ``stamp``'s output.

    Runs saved before this module existed hold ``device`` and ``machine`` as
    strings and ``jax`` alone; those are shown as they are.
    """
    m, v = meta.get("machine"), meta.get("versions")
    if not isinstance(m, dict):
        return f"{meta.get('device', '?')}, {m}"
    text = f"{m['device']} ({m['backend']}), {m['cpu']}, {m['cpu_count']} cores"
    if v:
        text += (
            f"; jax {v['jax']}, optax {v['optax']}, flax {v['flax']}, "
            f"optax_invloss {v['optax_invloss']} ({v['git']})"
        )
    return text
