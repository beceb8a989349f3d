"""Which method wins where: one table of every method on every problem.

Reads the ``runs.json`` of several runner folders (``python -m benchmarks.pinn``)
and writes a markdown matrix: one row per method, one column per problem, each
cell the median final relative L2 error over the seeds and its ratio to equal
weights on the same problem (below 1: better than equal weights); the best
median of each column in bold. A problem run at a preset other than quick or
standard is its own column, named with the preset. A run that ended in NaN
counts as the worst; the cell says how many did, and "diverged" when the
median is one of them.

Run::

  R=benchmarks/results/pinn
  python -m benchmarks.summary $R/helmholtz $R/helmholtz5 $R/poisson $R/wave \\
      $R/burgers --out $R/summary.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys

import numpy as np

EQUAL = "equal"


def load(folders: list[pathlib.Path]) -> dict:
    """``{problem: {method: [final rel. L2 per seed]}}`` and the step counts."""
    errors: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, set] = {}
    for folder in folders:
        data = json.loads((folder / "runs.json").read_text())
        for run in data["runs"]:
            problem = _column(run)
            errors.setdefault(problem, {}).setdefault(run["method"], []).append(
                run["final_rel_l2"]
            )
            steps.setdefault(problem, set()).add(run["adam_steps"])
    return {"errors": errors, "steps": steps}


def _column(run: dict) -> str:
    """A problem's column: its name, and the preset's unless quick or standard
    (``poisson standard_adam``: the same problem under another optimizer)."""
    preset = run.get("preset", "quick")
    if preset in ("quick", "standard"):
        return run["problem"]
    return f"{run['problem']} {preset}"


def _median(errors: list[float]) -> float:
    """The median, a run that ended in NaN or infinity counted as the worst."""
    values = np.asarray(errors, dtype=float)
    return float(np.median(np.where(np.isfinite(values), values, np.inf)))


def matrix(data: dict) -> str:
    """The markdown table (see the module docstring)."""
    errors, steps = data["errors"], data["steps"]
    problems = list(errors)
    methods = list(dict.fromkeys(m for p in problems for m in errors[p]))
    medians = {p: {m: _median(v) for m, v in errors[p].items()} for p in problems}
    header = [
        f"{p} ({', '.join(str(s) for s in sorted(steps[p]))} steps)" for p in problems
    ]
    lines = [
        "| method | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(problems),
    ]
    for method in methods:
        cells = []
        for p in problems:
            if method not in medians[p]:
                cells.append("-")
                continue
            value = medians[p][method]
            text = f"{value:.3g}" if np.isfinite(value) else "diverged"
            if EQUAL in medians[p] and method != EQUAL and np.isfinite(value):
                text += f" ({value / medians[p][EQUAL]:.2f}x)"
            if value == min(medians[p].values()):
                text = f"**{text}**"
            runs = errors[p][method]
            failed = sum(not np.isfinite(e) for e in runs)
            if failed:
                text += f" ({failed} of {len(runs)} seeds NaN)"
            cells.append(text)
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary")
    parser.add_argument("folders", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    text = (
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.summary', *argv])}`\n\n"
        "Median final relative L2 error over the seeds, and its ratio to equal "
        "weights on the same problem (below 1: better); the best of each column in "
        "bold.\n\n" + matrix(load(args.folders))
    )
    if args.out:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
