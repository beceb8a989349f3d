"""The standard-preset sweep: every public method on every problem, 3 seeds.

One ``python -m benchmarks.pinn ... --add`` per (problem, method), each written to
``benchmarks/results/pinn/standard/<folder>/`` as soon as it finishes, so a sweep
that stops midway loses at most the method it was running, and a second call
resumes: a method whose seeds are all in the folder's ``runs.json`` is skipped.
The seeds of a method are trained in one compiled program (``Trainer.run_seeds``).

The methods are every name :func:`benchmarks.methods.available` lists (every
public factory of the library the runner can train, so a method added to the
library joins the sweep without a change here) at its defaults, plus
``inverse_loss(min_weight=0.0)`` (the bare rule without the default floor).

Run (from the repository root; about four hours of one core, in the background)::

  nohup python -m benchmarks.sweep > sweep.log 2>&1 &
  python -m benchmarks.sweep --list          # the plan, nothing run
  python -m benchmarks.sweep --problems helmholtz --methods equal,inverse_loss

then ``python -m benchmarks.sweep --summary`` writes
``benchmarks/results/pinn/standard/summary.md`` from what has finished.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys

from benchmarks import methods as specs
from benchmarks import pinn, summary

ROOT = pathlib.Path("benchmarks/results/pinn/standard")
SEEDS = 3
EVAL_EVERY = 500

#: (folder, problem, preset): Poisson under plain gradient descent (the paper's)
#: and under Adam are two columns.
PLAN = (
    ("helmholtz", "helmholtz", "standard"),
    ("burgers", "burgers", "standard"),
    ("wave", "wave", "standard"),
    ("helmholtz5", "helmholtz5", "standard"),
    ("poisson", "poisson", "standard"),
    ("poisson_adam", "poisson", "standard_adam"),
)

#: Variants run besides every method at its defaults.
EXTRA = ("inverse_loss(min_weight=0.0)",)

#: Run first, on every problem, so that a sweep stopped midway has compared the
#: seed method with equal weights and the strongest peers everywhere.
FIRST = ("equal", "inverse_loss", "inverse_loss(min_weight=0.0)", "lr_annealing")


def method_specs() -> list[str]:
    """FIRST, then every other available method at its defaults, then EXTRA."""
    names = [n for n in specs.available() if n not in FIRST]
    return list(dict.fromkeys([*FIRST, *names, *EXTRA]))


def done(folder: pathlib.Path) -> dict[str, set[int]]:
    """The seeds of each method already in ``folder``'s runs.json."""
    path = folder / "runs.json"
    if not path.exists():
        return {}
    seeds: dict[str, set[int]] = {}
    for run in json.loads(path.read_text())["runs"]:
        seeds.setdefault(run["method"], set()).add(run["seed"])
    return seeds


def plan(problems=None, methods=None) -> list[tuple[str, str, str, str]]:
    """``(spec, folder, problem, preset)`` in order: each method on every problem
    before the next method."""
    return [
        (spec, folder, problem, preset)
        for spec in (methods or method_specs())
        for folder, problem, preset in PLAN
        if not problems or folder in problems
    ]


def arguments(spec: str, folder: str, problem: str, preset: str) -> list[str] | None:
    """The runner's arguments for one entry, or None when its seeds are done.

    Decided when the entry is run: ``--add`` once the folder has a runs.json."""
    out = ROOT / folder
    if done(out).get(specs.parse_method(spec).text, set()) >= set(range(SEEDS)):
        return None
    args = [
        "--problem", problem, "--preset", preset, "--methods", spec,
        "--seeds", str(SEEDS), "--eval-every", str(EVAL_EVERY), "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    return [*args, "--add"] if (out / "runs.json").exists() else args


def last_fifth(folder: pathlib.Path, method: str = specs.EQUAL) -> list[str]:
    """Markdown rows: each seed's relative change of ``method``'s error over the
    last fifth of training (the preset has converged when it is near 0)."""
    rows = []
    for run in json.loads((folder / "runs.json").read_text())["runs"]:
        if run["method"] != method:
            continue
        steps, errors = run["error_history"]["steps"], run["error_history"]["rel_l2"]
        k = next(i for i, s in enumerate(steps) if s >= 0.8 * steps[-1])
        change = (errors[-1] - errors[k]) / errors[k]
        rows.append(
            f"| {folder.name} | {run['seed']} | {steps[k]} | {errors[k]:.3g} | "
            f"{errors[-1]:.3g} | {100 * change:+.1f}% |"
        )
    return rows


def write_summary() -> str:
    """``ROOT/summary.md``: the matrix over the finished folders and the
    equal-weights convergence check."""
    folders = [ROOT / f for f, _, _ in PLAN if (ROOT / f / "runs.json").exists()]
    text = summary.main([*map(str, folders), "--out", str(ROOT / "summary.md")])
    rows = [row for folder in folders for row in last_fifth(folder)]
    check = (
        "\nEqual weights over the last fifth of training (the standard presets' "
        "convergence check, `python -m benchmarks.sweep --summary`):\n\n"
        "| problem | seed | step | error there | final error | change |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(check)  # summary.main has printed the matrix
    (ROOT / "summary.md").write_text(text + check)
    return text + check


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep")
    p.add_argument("--problems", help="comma-separated folders of the plan")
    p.add_argument("--methods", help="comma-separated specs (default: every one)")
    p.add_argument("--list", action="store_true", help="print the plan, run nothing")
    p.add_argument("--summary", action="store_true", help="write summary.md only")
    args = p.parse_args(argv)
    if args.summary:
        write_summary()
        return
    problems = args.problems.split(",") if args.problems else None
    methods = (
        [m.text for m in specs.parse_methods(args.methods)] if args.methods else None
    )
    for entry in plan(problems, methods):
        run = arguments(*entry)
        if run is None:
            continue
        print("python -m benchmarks.pinn", shlex.join(run), flush=True)
        if not args.list:
            pinn.main(run)


if __name__ == "__main__":
    main()
