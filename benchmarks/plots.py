"""PNG plots of benchmark runs (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.problems import Problem  # noqa: E402

#: Names of the inputs, per problem (space, then time); others get x, y.
AXES = {"wave": ("x", "t"), "burgers": ("x", "t"), "poisson": ("x",)}


def _stack(runs: Sequence[dict], field: str, key: str):
    """Seeds stacked: ``(steps, values (seeds, points))`` of a history field."""
    steps = np.asarray(runs[0][field]["steps"])
    values = np.stack([np.asarray(r[field][key]) for r in runs])
    return steps, values


def _by_method(runs: Sequence[dict], methods: Sequence[str]) -> dict[str, list]:
    grouped = {m: [r for r in runs if r["method"] == m] for m in methods}
    return {m: rs for m, rs in grouped.items() if rs}


def error_plot(
    path: pathlib.Path, runs: Sequence[dict], problem: str, methods: Sequence[str]
):
    """Relative L2 error against steps: median over seeds, min-max shaded."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for method, mine in _by_method(runs, methods).items():
        steps, errors = _stack(mine, "error_history", "rel_l2")
        (line,) = ax.plot(steps, np.median(errors, axis=0), label=method)
        if len(mine) > 1:
            ax.fill_between(
                steps,
                errors.min(axis=0),
                errors.max(axis=0),
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
    adam = {
        r["adam_steps"] for r in runs if r.get("adam_steps", r["steps"]) < r["steps"]
    }
    for steps in sorted(adam):
        ax.axvline(steps, color="gray", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step (after the dotted line: L-BFGS iterations)" if adam else "step")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"{problem}: error (median over seeds, min-max shaded)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def weights_plot(
    path: pathlib.Path, runs: Sequence[dict], problem: str, methods: Sequence[str]
):
    """Weights against steps, one panel per method: median over seeds, each seed
    faint."""
    grouped = _by_method(runs, methods)
    cols = min(3, len(grouped))
    rows = math.ceil(len(grouped) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols, 3.2 * rows),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for ax, (method, mine) in zip(axes.flat, grouped.items(), strict=False):
        signed = False
        for term in mine[0]["weight_history"]["weights"]:
            steps = np.asarray(mine[0]["weight_history"]["steps"])
            values = np.stack([r["weight_history"]["weights"][term] for r in mine])
            (line,) = ax.plot(steps, np.median(values, axis=0), label=term)
            if len(mine) > 1:  # each seed, faint
                ax.plot(steps, values.T, color=line.get_color(), alpha=0.2, lw=0.7)
            signed = signed or bool(np.any(values <= 0))
        if signed:  # aggregator weights may be zero or negative
            ax.set_yscale("symlog", linthresh=1e-3)
        else:
            ax.set_yscale("log")
        if not mine[0]["weight_history"]["weights"]:
            ax.text(0.5, 0.5, "no weights", ha="center", transform=ax.transAxes)
        ax.set_title(method, fontsize="small")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        if mine[0]["weight_history"]["weights"]:
            ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(grouped) :]:
        ax.set_visible(False)
    fig.suptitle(f"{problem}: loss weights (median over seeds; each seed faint)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def solution_plot(
    path: pathlib.Path,
    problem: Problem,
    prediction: np.ndarray,
    label: str,
):
    """Prediction, exact solution and |error| on the evaluation grid."""
    points, exact = problem.reference()
    prediction = np.asarray(prediction, np.float64).reshape(problem.eval_shape)
    exact = np.asarray(exact).reshape(problem.eval_shape)
    error = np.abs(prediction - exact)
    names = AXES.get(problem.name, ("x", "y"))
    if problem.input_dim == 1:
        x = points[:, 0]
        fig, (top, bottom) = plt.subplots(
            2, 1, figsize=(6.4, 5.2), sharex=True, layout="constrained"
        )
        top.plot(x, exact, "k-", label="exact")
        top.plot(x, prediction, "--", label="prediction")
        top.legend(fontsize="small")
        top.set_ylabel("u")
        bottom.semilogy(x, np.maximum(error, 1e-16))
        bottom.set_ylabel("|error|")
        bottom.set_xlabel(names[0])
    else:
        extent = [
            points[:, 0].min(),
            points[:, 0].max(),
            points[:, 1].min(),
            points[:, 1].max(),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
        vmax = float(max(np.abs(exact).max(), np.abs(prediction).max()))
        fields = (
            ("prediction", prediction, "RdBu_r", (-vmax, vmax)),
            ("exact", exact, "RdBu_r", (-vmax, vmax)),
            ("|error|", error, "viridis", (0.0, float(error.max()))),
        )
        for ax, (title, field, cmap, (lo, hi)) in zip(axes, fields, strict=True):
            image = ax.imshow(
                field.T,
                origin="lower",
                extent=extent,
                aspect="auto",
                cmap=cmap,
                vmin=lo,
                vmax=hi,
            )
            ax.set_title(title)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            fig.colorbar(image, ax=ax)
    fig.suptitle(f"{problem.name}: {label}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
