"""The standard-preset sweep resumes where it stopped and covers every method."""

from __future__ import annotations

import json

import pytest

from benchmarks import methods as specs
from benchmarks import sweep


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "ROOT", tmp_path)
    return tmp_path


def _write_runs(folder, runs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.json").write_text(json.dumps({"runs": runs}))


def test_every_available_method_is_in_the_sweep():
    planned = {specs.parse_method(s).name for s in sweep.method_specs()}
    assert planned == set(specs.available())
    assert sweep.method_specs()[: len(sweep.FIRST)] == list(sweep.FIRST)


def test_each_method_runs_on_every_problem_before_the_next(root):
    entries = sweep.plan(methods=["equal", "inverse_loss"])
    assert [e[0] for e in entries] == ["equal"] * 6 + ["inverse_loss"] * 6
    assert [e[1] for e in entries[:6]] == [f for f, _, _ in sweep.PLAN]


def test_a_finished_method_is_skipped_and_a_partial_one_rerun(root):
    _write_runs(
        root / "burgers",
        [{"method": "equal", "seed": s} for s in range(sweep.SEEDS)]
        + [{"method": "inverse_loss(min_weight=0.0)", "seed": 0}],
    )
    assert sweep.arguments("equal", "burgers", "burgers", "standard") is None
    # The spec is normalised as the runner labels it.
    args = sweep.arguments("inverse_loss(min_weight=0.)", "burgers", "burgers", "s")
    assert args is not None and args[-1] == "--add"
    assert args[args.index("--seeds") + 1] == str(sweep.SEEDS)


def test_the_first_run_of_a_folder_creates_it_and_later_runs_add(root):
    first = sweep.arguments("equal", "wave", "wave", "standard")
    assert "--add" not in first
    assert first[first.index("--out") + 1] == str(root / "wave")
    _write_runs(root / "wave", [{"method": "equal", "seed": 0}])
    assert sweep.arguments("lr_annealing", "wave", "wave", "standard")[-1] == "--add"


def test_the_convergence_check_compares_the_last_fifth(root):
    history = {"steps": [100, 200, 300, 400, 500], "rel_l2": [1.0, 0.8, 0.6, 0.5, 0.45]}
    _write_runs(
        root / "wave",
        [
            {"method": "equal", "seed": 0, "error_history": history},
            {"method": "lr_annealing", "seed": 0, "error_history": history},
        ],
    )
    # 80% of 500 steps is step 400: error 0.5 there, 0.45 at the end, -10%.
    assert sweep.last_fifth(root / "wave") == [
        "| wave | 0 | 400 | 0.5 | 0.45 | -10.0% |"
    ]
