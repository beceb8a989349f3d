"""Pages generated at build time from committed results and notebooks.

Nothing measured is typed into the documentation sources: when Sphinx loads
it, this extension renders the benchmark tables again from the runner's
``runs.json`` files (with the same functions that wrote them,
``benchmarks.report.document`` and ``benchmarks.summary.matrix``), copies the
committed figures and result pages, and copies the notebooks, whose committed
outputs myst-nb renders without executing them. The output goes to
``docs/_generated/`` (not committed).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil

DOCS = pathlib.Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = DOCS / "_generated"

# The runner's comparison folders shown on the benchmarks page, in this order.
PINN_FOLDERS = [
    "main",
    "helmholtz-paper",
    "helmholtz",
    "helmholtz5",
    "poisson",
    "wave",
    "burgers",
    "burgers-aggregators",
    "allen_cahn-pointwise",
]
# Result pages written by the other benchmark scripts (each from its JSON).
RESULT_PAGES = [
    "overhead_cpu.md",
    "overhead_aggregators.md",
    "lbfgs_policies.md",
    "inverse_loss_defaults.md",
    "grad_method_cost.md",
]


def _title(name: str) -> str:
    return name.replace("_", " ").replace("-", " ")


def _demote_headings(text: str) -> str:
    """Shifts the markdown headings so the highest is level 2 (under the title)."""
    levels = [len(m) for m in re.findall(r"^(#{1,6}) ", text, flags=re.M)]
    if not levels:
        return text
    by = 2 - min(levels)
    return re.sub(
        r"^(#{1,6}) ", lambda m: "#" * (len(m.group(1)) + by) + " ", text, flags=re.M
    )


def _strip_links(text: str) -> str:
    """Relative links of a result page point into the repository, not the site."""
    return re.sub(r"\[([^\]]+)\]\((?!https?://)[^)]+\)", r"\1", text)


def pinn_pages() -> list[str]:
    from benchmarks import report, summary

    names = []
    folders = [RESULTS / "pinn" / f for f in PINN_FOLDERS]
    folders = [f for f in folders if (f / "runs.json").exists()]
    out = OUT / "benchmarks"
    for folder in folders:
        data = json.loads((folder / "runs.json").read_text())
        body = report.document(data["runs"], data)
        figures = sorted(folder.glob("*.png"))
        lines = [
            f"# PINN runs: {_title(folder.name)}",
            "",
            f"From `benchmarks/results/pinn/{folder.name}/runs.json`.",
            "",
            _demote_headings(body),
        ]
        for png in figures:
            shutil.copy(png, out / f"{folder.name}-{png.name}")
            lines += ["", f"![{png.stem}]({folder.name}-{png.name})"]
        (out / f"pinn-{folder.name}.md").write_text("\n".join(lines) + "\n")
        names.append(f"pinn-{folder.name}")
    sweep = [
        RESULTS / "pinn" / f
        for f in ("helmholtz", "helmholtz5", "poisson", "wave", "burgers")
    ]
    sweep = [f for f in sweep if (f / "runs.json").exists()]
    if sweep:
        text = summary.matrix(summary.load(sweep))
        (out / "summary.md").write_text(
            "Median final relative L2 error over the seeds, and its ratio to equal "
            "weights on the same problem (below 1: better); the best of each column "
            "in bold. Rendered from the `runs.json` of "
            + ", ".join(f"`{f.name}`" for f in sweep)
            + ".\n\n"
            + text
        )
    return names


def result_pages() -> list[str]:
    names = []
    for page in RESULT_PAGES:
        src = RESULTS / page
        if not src.exists():
            continue
        stem = src.stem
        text = _strip_links(_demote_headings(src.read_text()))
        (OUT / "benchmarks" / f"{stem}.md").write_text(
            f"# {_title(stem).capitalize()}\n\nFrom `benchmarks/results/{page}`.\n\n"
            + text
        )
        names.append(stem)
    return names


def notebooks() -> list[str]:
    out = OUT / "notebooks"
    names = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy(nb, out / nb.name)
        names.append(nb.stem)
    return names


def toctree(path: pathlib.Path, title: str, intro: str, entries: list[str]) -> None:
    body = "\n".join(entries)
    path.write_text(
        f"# {title}\n\n{intro}\n\n```{{toctree}}\n:maxdepth: 1\n\n{body}\n```\n"
    )


# The API reference: every name in ``optax_invloss.__all__``, in exactly one
# group (a state next to its method). A public name in no group, or a group
# entry that is not public, stops the build (ExtensionError), and
# tests/test_docs.py checks the same without building.
API_GROUPS = {
    "The training step": [
        "with_weighting",
        "WeightedOptimizerState",
        "weighted_sum",
        "loss_weights",
        "WeightingMethod",
        "nnx_params_fn",
    ],
    "Term weights from loss values": [
        "inverse_loss",
        "InverseLossState",
        "static_weights",
        "StaticWeightsState",
        "softadapt",
        "SoftAdaptState",
        "relobralo",
        "ReLoBRaLoState",
        "uncertainty_weighting",
        "UncertaintyWeightingState",
        "dwa",
        "DWAState",
        "resnorm",
        "ResNormState",
    ],
    "Term weights from gradients": [
        "lr_annealing",
        "LRAnnealingState",
        "grad_norm_balance",
        "GradNormBalanceState",
        "ntk_weights",
        "NTKWeightsState",
        "gradnorm",
        "GradNormState",
        "weight_matrix_mask",
        "last_layer_mask",
    ],
    "Gradient aggregators": [
        "term_gradients",
        "aggregation_weights",
        "AggregatorState",
        "config",
        "imtl_g",
        "m_config",
        "m_config_term",
        "MConFIGState",
        "pcgrad",
        "mgda",
        "cagrad",
        "nash_mtl",
        "upgrad",
        "dualproj",
    ],
    "Per-point weights": [
        "rba",
        "RBAState",
        "self_adaptive",
        "SelfAdaptiveState",
        "pointwise_loss",
        "PointWeightingMethod",
    ],
    "L-BFGS": [
        "run_lbfgs",
        "LBFGSInfo",
        "weighted_objective",
        "log_objective",
        "reset_lbfgs",
        "reset_on_new_weights",
    ],
    "Several devices": ["sharded", "global_mean"],
}


def api_mismatch(public) -> list[str]:
    """What is wrong between ``public`` (``__all__``) and API_GROUPS, in words."""
    grouped = [n for names in API_GROUPS.values() for n in names]
    problems = [
        f"{n} is public but in no API group" for n in public if n not in grouped
    ]
    problems += [
        f"{n} is in an API group but not in optax_invloss.__all__"
        for n in grouped
        if n not in public
    ]
    problems += [
        f"{n} is in more than one API group"
        for n in sorted({n for n in grouped if grouped.count(n) > 1})
    ]
    return problems


def api_page() -> None:
    from sphinx.errors import ExtensionError

    import optax_invloss

    problems = api_mismatch(list(optax_invloss.__all__))
    if problems:
        raise ExtensionError(
            "docs/_ext/generated.py API_GROUPS does not match optax_invloss.__all__: "
            + "; ".join(problems)
        )
    lines = [
        "API reference",
        "=============",
        "",
        "Every public name of ``optax_invloss``, one page each, built from "
        "its docstring.",
        "",
        ".. currentmodule:: optax_invloss",
        "",
    ]
    for title, names in API_GROUPS.items():
        lines += [
            title,
            "-" * len(title),
            "",
            ".. autosummary::",
            "   :toctree: api",
            "   :nosignatures:",
            "",
        ]
        lines += [f"   {n}" for n in names] + [""]
    (OUT / "api.rst").write_text("\n".join(lines))


def generate(app=None) -> None:
    del app
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "benchmarks").mkdir(parents=True)
    (OUT / "notebooks").mkdir(parents=True)
    api_page()
    pinn = pinn_pages()
    pages = result_pages()
    toctree(
        OUT / "benchmarks" / "index.md",
        "Benchmark results",
        "Every table below is rendered at build time from the committed "
        "results files; the command that produced each is on its page.",
        [*pinn, *pages],
    )
    toctree(
        OUT / "notebooks" / "index.md",
        "Notebooks",
        "The Colab notebooks with the outputs of their committed runs.",
        notebooks(),
    )


def setup(app):
    # At set-up, before Sphinx lists the source files: in a fresh clone the
    # generated pages must exist when the environment looks for documents, or
    # autosummary finds no API page to generate (a ``builder-inited`` hook is
    # too late for that listing).
    generate(app)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
