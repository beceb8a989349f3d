"""The GPU job: the paper presets and the overhead benchmark in one short run.

For a machine with a GPU (issues 19 and 20): runs, in this order, until the
deadline (default 8 minutes of wall time):

1. ``python -m benchmarks.overhead``: the cost per step of every method on the
   GPU (``benchmarks/results/overhead_gpu.*``);
2. the paper presets for equal weights, ``inverse_loss`` and ``lr_annealing``:
   Helmholtz (2 and 5 terms, 3 seeds), Poisson under the paper's gradient
   descent, Burgers, and wave at the paper's 5 x 500 network (1 seed, the
   costliest), each written to ``benchmarks/results/pinn/gpu/<problem>/`` in the
   runner's format (runs.json, table, plots).

A job is started only while the time left exceeds its estimate (``ESTIMATES``,
seconds on one H200 GPU, to be corrected from the first run's log), so that the
whole fits the deadline; what was skipped is printed at the end and in
``README.md`` there. Each job is one subprocess, so a job
that fails does not stop the others.

Run (from the repository root, on the GPU machine)::

  python -m benchmarks.gpu
  python -m benchmarks.gpu --smoke --out /tmp/gpu-smoke  # a few steps per job
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import shlex
import subprocess
import sys
import time

OUT = pathlib.Path("benchmarks/results/pinn/gpu")
METHODS = "equal,inverse_loss,lr_annealing"

#: (name, runner arguments, estimated seconds on the GPU).
JOBS = (
    (
        "overhead",
        ["-m", "benchmarks.overhead", "--name", "overhead_gpu"],
        150,
    ),
    ("helmholtz", ["--problem", "helmholtz", "--seeds", "3"], 60),
    ("helmholtz5", ["--problem", "helmholtz5", "--seeds", "3"], 60),
    ("poisson", ["--problem", "poisson", "--seeds", "3"], 20),
    ("burgers", ["--problem", "burgers", "--seeds", "3"], 60),
    ("wave", ["--problem", "wave", "--seeds", "1"], 150),
)


def command(name: str, args: list[str], smoke: bool, out: pathlib.Path) -> list[str]:
    """The job's command line (``python -m ...``), writing under ``out``."""
    if name == "overhead":
        extra = ["--quick", "--repeats", "2", "--out", str(out)] if smoke else []
        return [sys.executable, *args, *extra]
    run = [sys.executable, "-m", "benchmarks.pinn", *args, "--preset", "paper"]
    run += ["--methods", METHODS, "--out", str(out / name), "--no-progress"]
    if smoke:
        run += ["--steps", "20", "--eval-every", "10", "--no-plots"]
    return run


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds (480)")
    p.add_argument("--smoke", action="store_true", help="a few steps per job")
    p.add_argument("--only", help="comma-separated job names")
    p.add_argument("--out", type=pathlib.Path, default=OUT, help=f"default {OUT}")
    args = p.parse_args(argv)
    start, log, skipped = time.monotonic(), [], []
    wanted = args.only.split(",") if args.only else [name for name, _, _ in JOBS]
    for name, job_args, estimate in JOBS:
        if name not in wanted:
            continue
        left = args.deadline - (time.monotonic() - start)
        if not args.smoke and left < estimate:
            skipped.append(f"{name} (estimated {estimate} s, {left:.0f} s left)")
            continue
        cmd = command(name, job_args, args.smoke, args.out)
        shown = shlex.join(["python", *cmd[1:]])
        print(f"== {name}: {shown}", flush=True)
        t = time.monotonic()
        rc = subprocess.run(cmd).returncode
        log.append(f"| {name} | `{shown}` | {rc} | {time.monotonic() - t:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The GPU job (`python -m benchmarks.gpu`)",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{time.monotonic() - start:.0f} s in all.",
        "",
        "| job | command | exit code | seconds |",
        "|---|---|---|---|",
        *log,
        "",
        "Skipped for time: " + (", ".join(skipped) if skipped else "none") + ".",
    ]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return log


if __name__ == "__main__":
    main()
