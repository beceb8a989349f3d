"""Tests for the PINN comparison runner: `benchmarks.pinn` and `benchmarks.methods`."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json

import jax
import numpy as np
import pytest

import optax_invloss as oil
from benchmarks import methods, pinn, plots, report
from benchmarks.problems import get_problem
from benchmarks.train import Trainer, train


def test_runner_end_to_end_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    paths = pinn.main(
        [
            "--problem",
            "poisson",
            "--preset",
            "adam",
            "--methods",
            "equal, inverse_loss(min_weight=0.0)",
            "--seeds",
            "1",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--hidden",
            "8",
            "--batch",
            "16",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    names = {p.name for p in out.iterdir()}
    assert names == {
        "runs.json",
        "runs.csv",
        "table.md",
        "poisson_error.png",
        "poisson_weights.png",
        "poisson_solution.png",
    }
    assert set(paths.values()) == {out / name for name in names}
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "runs.json").read_text())
    assert data["command"].startswith("python -m benchmarks.pinn --problem poisson")
    assert [r["method"] for r in data["runs"]] == [
        "equal",
        "inverse_loss(min_weight=0.0)",
    ]
    for run in data["runs"]:
        assert run["problem"] == "poisson" and run["seed"] == 0
        assert run["steps"] == 20 and run["train_seconds"] > 0
        assert run["error_history"]["steps"] == [10, 20]
        assert run["final_rel_l2"] == run["error_history"]["rel_l2"][-1]
        assert run["best_rel_l2"] == min(run["error_history"]["rel_l2"])
        assert set(run["final_weights"]) == {"pde", "bc"}
        assert run["weight_history"]["steps"][-1] == 20
    equal, bare = data["runs"]
    assert equal["final_weights"] == {"pde": 1.0, "bc": 1.0}
    # Bare inverse loss: the weights sum to 1, and the larger PDE loss gets less.
    assert sum(bare["final_weights"].values()) == pytest.approx(1.0, rel=1e-5)
    assert bare["final_weights"]["pde"] < bare["final_weights"]["bc"]

    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["method"] for r in rows] == ["equal", "inverse_loss(min_weight=0.0)"]
    assert rows[0]["final_weights"] == "bc=1;pde=1"
    assert float(rows[1]["final_rel_l2"]) == bare["final_rel_l2"]

    table = (out / "table.md").read_text()
    assert "| `equal` |" in table and "| `inverse_loss(min_weight=0.0)` |" in table
    assert "1.00, 1.00 (" in table  # equal's time per step relative to itself
    printed = capsys.readouterr().out
    assert "| `equal` |" in printed and str(out / "poisson_solution.png") in printed

    # --render rebuilds the table and the history plots from runs.json alone.
    (out / "table.md").unlink()
    (out / "poisson_error.png").unlink()
    pinn.main(["--render", str(out)])
    assert (out / "table.md").read_text() == table
    assert (out / "poisson_error.png").read_bytes()[:4] == b"\x89PNG"

    # Runs saved by an older runner, without a newer field, still render.
    old = json.loads((out / "runs.json").read_text())
    del old["runs"][0]["cpu_seconds_per_step"]
    (out / "runs.json").write_text(json.dumps(old))
    pinn.main(["--render", str(out)])
    assert (
        list(csv.DictReader((out / "runs.csv").open()))[0]["cpu_seconds_per_step"] == ""
    )
    (out / "runs.json").write_text(json.dumps(data))

    # --add: one more method, and equal run again, join the earlier runs.
    common = ["--problem", "poisson", "--preset", "adam", "--seeds", "1"]
    common += ["--eval-every", "10", "--hidden", "8", "--batch", "16"]
    common += ["--out", str(out), "--no-progress", "--no-plots", "--add"]
    pinn.main([*common, "--steps", "20", "--methods", "equal,inverse_loss"])
    added = json.loads((out / "runs.json").read_text())
    assert [r["method"] for r in added["runs"]] == [
        "inverse_loss(min_weight=0.0)",  # kept
        "equal",  # replaced by its new run
        "inverse_loss",
    ]
    assert added["runs"][0] == bare
    assert added["methods"] == ["equal", "inverse_loss(min_weight=0.0)", "inverse_loss"]
    assert added["command"].startswith(data["command"] + "; then ")
    assert "| `inverse_loss` |" in (out / "table.md").read_text()
    # --first-seed: seed 3 joins seed 0 (--add), the seed count is the distinct seeds.
    pinn.main([*common, "--steps", "20", "--methods", "equal", "--first-seed", "3"])
    seeded = json.loads((out / "runs.json").read_text())
    assert [r["seed"] for r in seeded["runs"] if r["method"] == "equal"] == [0, 3]
    assert seeded["seeds"] == 2
    # Runs of another length cannot be added to the same table.
    with pytest.raises(SystemExit):
        pinn.main([*common, "--steps", "30", "--methods", "equal"])
    assert "holds poisson runs of [20] steps" in capsys.readouterr().err


def test_bad_method_is_a_usage_error_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pinn.main(["--methods", "equal,no_such_method", "--out", str(tmp_path)])
    message = capsys.readouterr().err
    assert "unknown method 'no_such_method'" in message
    assert "inverse_loss" in message
    assert not list(tmp_path.iterdir())


def test_parse_valid_specs():
    spec = methods.parse_method("inverse_loss")
    assert (spec.name, spec.args, spec.kwargs) == ("inverse_loss", (), ())
    spec = methods.parse_method(" inverse_loss( min_weight = 0.0, ema_decay=0.9 ) ")
    assert spec.text == "inverse_loss(min_weight=0.0, ema_decay=0.9)"
    assert dict(spec.kwargs) == {"min_weight": 0.0, "ema_decay": 0.9}
    # Arithmetic and negative numbers: 0.1 / 2 = 0.05, -(-3) = 3.
    spec = methods.parse_method("inverse_loss(min_weight=0.1 / 2, update_every=-(-3))")
    assert dict(spec.kwargs) == {"min_weight": 0.05, "update_every": 3}
    spec = methods.parse_method("inverse_loss(1e-8)")  # positional: eps
    assert spec.args == (1e-8,)
    assert methods.parse_method("equal").name == "equal"


def test_parse_list_splits_at_top_level_commas_only():
    specs = methods.parse_methods(
        "equal,inverse_loss(min_weight=0.0, max_weight=0.9),inverse_loss"
    )
    assert [s.text for s in specs] == [
        "equal",
        "inverse_loss(min_weight=0.0, max_weight=0.9)",
        "inverse_loss",
    ]


def test_parse_lbfgs_phase():
    spec = methods.parse_method("inverse_loss + lbfgs(policy=frozen)")
    assert spec.name == "inverse_loss" and spec.kwargs == ()
    assert spec.lbfgs == (("policy", "frozen"),)
    assert spec.text == "inverse_loss+lbfgs(policy='frozen')"
    spec = methods.parse_method(
        "inverse_loss(min_weight=0.0)+lbfgs(policy=refreshed, refresh_every=5, "
        "iterations=7)"
    )
    assert dict(spec.kwargs) == {"min_weight": 0.0}
    assert dict(spec.lbfgs) == {
        "policy": "refreshed",
        "refresh_every": 5,
        "iterations": 7,
    }
    assert methods.parse_method("equal+lbfgs").lbfgs == ()


@pytest.mark.parametrize(
    "text, match",
    [
        ("inverse_loss+adam", "only an L-BFGS phase"),
        ("inverse_loss+lbfgs(optimizer=1)", "keyword arguments among"),
        ("inverse_loss+lbfgs(10)", "positional"),
        ("inverse_loss+lbfgs+lbfgs", "at most one"),
    ],
)
def test_bad_lbfgs_specs_are_errors(text, match):
    with pytest.raises(ValueError, match=match):
        methods.parse_method(text)


def test_lbfgs_iterations_come_from_the_spec_or_the_flag():
    flag = argparse.Namespace(lbfgs_steps=30)
    none = argparse.Namespace(lbfgs_steps=0)
    spec = methods.parse_method("inverse_loss+lbfgs(policy=log, iterations=5)")
    assert pinn._lbfgs_phase(spec, flag) == (5, {"policy": "log"})
    spec = methods.parse_method("inverse_loss+lbfgs(policy=log)")
    assert pinn._lbfgs_phase(spec, flag) == (30, {"policy": "log"})
    with pytest.raises(ValueError, match="iterations >= 1"):
        pinn._lbfgs_phase(spec, none)
    # Without +lbfgs: the flag's count, frozen weights (run_lbfgs's default).
    assert pinn._lbfgs_phase(methods.parse_method("equal"), flag) == (30, {})
    assert pinn._lbfgs_phase(methods.parse_method("equal"), none) == (0, {})


@pytest.mark.parametrize("policy", ["frozen", "refreshed"])
def test_training_with_an_lbfgs_phase(policy):
    problem = get_problem("poisson")
    done = []
    if policy == "frozen":  # through train(), as benchmarks/*.py scripts call it
        result = train(
            problem,
            oil.inverse_loss(),
            preset="adam",
            seed=1,
            steps=20,
            chunk=10,
            progress=done.append,
            lbfgs_steps=5,
        )
    else:
        settings = dataclasses.replace(
            problem.preset("adam"), layers=(1, 8, 1), batch=16
        )
        trainer = Trainer(
            problem,
            oil.inverse_loss(),
            settings,
            steps=20,
            chunk=10,
            lbfgs_steps=5,
            lbfgs={"policy": "refreshed", "refresh_every": 2},
        )
        result = trainer.run(0, progress=done.append)
    assert done == [10, 10, 5]
    assert result.steps.tolist() == [10, 20, 25] and result.adam_steps == 20
    assert len(result.errors) == 3 and np.isfinite(result.errors).all()
    assert result.compile_seconds > 0 and result.lbfgs_seconds > 0
    assert set(result.final_weights) == {"pde", "bc"}
    if policy == "frozen":  # the weights of the Adam phase's end
        adam_end = {k: float(v[-1]) for k, v in result.weights.items()}
        assert result.final_weights == pytest.approx(adam_end)
    record = report.record(result, problem="poisson", preset="adam", method="m", seed=0)
    assert record["lbfgs_steps"] == 5 and record["steps"] == 25


@pytest.mark.parametrize(
    ("method", "vmapped"),
    [(oil.inverse_loss(), True), (oil.lr_annealing(update_every=2), False)],
    ids=["vmap", "seed-by-seed"],
)
def test_seeds_in_one_program_give_the_separate_runs(method, vmapped):
    # A loss-value method runs its seeds under vmap, a gradient-based one seed by
    # seed in the program; either way each seed's run is the one run alone.
    problem = get_problem("helmholtz")
    settings = dataclasses.replace(problem.preset("quick"), layers=(2, 8, 1), batch=8)
    trainer = Trainer(problem, method, settings, steps=4, chunk=2)
    assert trainer.vmapped == vmapped
    together = trainer.run_seeds([0, 2])
    for seed, got in zip((0, 2), together, strict=True):
        alone = trainer.run(seed)
        assert (got.batch_seeds, alone.batch_seeds) == (2, 1)
        np.testing.assert_allclose(got.errors, alone.errors, rtol=1e-5)
        for term in alone.losses:
            np.testing.assert_allclose(got.losses[term], alone.losses[term], rtol=1e-5)
            np.testing.assert_allclose(
                got.weights[term], alone.weights[term], rtol=1e-5
            )
        for a, b in zip(
            jax.tree.leaves(got.params), jax.tree.leaves(alone.params), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The seeds are trained from their own initialisation and samples.
    assert not np.allclose(together[0].losses["pde"], together[1].losses["pde"])
    with pytest.raises(ValueError, match="distinct"):
        trainer.run_seeds([1, 1])


def test_bare_names_are_strings_or_library_objects():
    node = methods._parse("f(a=frozen, b=inverse_loss, c={pde: 1, 'bc': 10})", "t")
    values = {k.arg: methods._value(k.value, "t") for k in node.keywords}
    assert values["a"] == "frozen"
    assert values["b"] is oil.inverse_loss
    assert values["c"] == {"pde": 1, "bc": 10}


def test_unknown_name_lists_the_available_methods():
    with pytest.raises(ValueError, match="unknown method 'invers_loss'") as info:
        methods.parse_method("invers_loss(min_weight=0.0)")
    assert "equal" in str(info.value) and "inverse_loss" in str(info.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("inverse_loss(min_weight=", "cannot parse"),
        ("inverse_loss(min_weight=0.0", "cannot parse"),
        ("inverse_loss(min_weight=__import__('os'))", "not a literal"),
        ("inverse_loss(min_weight=open)", "arithmetic|not a literal|min_weight"),
        ("inverse_loss.attr", "write a method as"),
        ("inverse_loss(**{'eps': 1.0})", r"'\*' and '\*\*'"),
        ("inverse_loss(min_weight='a' * 2)", "not a number"),
        ("inverse_loss(no_such_arg=1)", "unexpected keyword"),
        ("equal(1)", "takes no arguments"),
        ("equal,equal", "named twice"),
    ],
)
def test_bad_specs_are_errors(text, match):
    with pytest.raises(ValueError, match=match):
        if "," in text:
            methods.parse_methods(text)
        else:
            spec = methods.parse_method(text)
            spec.build(get_problem("poisson"))


def test_bad_hyperparameter_names_the_method_and_problem():
    spec = methods.parse_method("inverse_loss(ema_decay=1.5)")
    with pytest.raises(ValueError, match=r"inverse_loss\(ema_decay=1.5\).*poisson"):
        spec.build(get_problem("poisson"))


def test_factories_are_the_public_weighting_factories():
    found = methods.factories()
    assert "inverse_loss" in found
    # Helpers, the class itself and wrappers that take a method are not factories.
    others = ("with_weighting", "weighted_sum", "loss_weights", "WeightingMethod")
    for name in (*others, "sharded"):
        assert name not in found
    assert set(found) <= set(oil.__all__)


def test_problem_defaults_fill_reference_and_weights(monkeypatch):
    def fake(reference: str = "x", weights=None) -> oil.WeightingMethod:
        return (reference, weights)

    def needs(weights) -> oil.WeightingMethod:
        return weights

    monkeypatch.setattr(methods, "factories", lambda: {"fake": fake, "needs": needs})
    poisson = get_problem("poisson")
    # The residual term is the first term; an optional dict is left alone.
    assert methods.parse_method("fake").build(poisson) == ("pde", None)
    assert methods.parse_method("fake(reference='bc')").build(poisson) == ("bc", None)
    # A required dict: the hand-tuned weights, or 1 per term; partial dicts filled.
    assert methods.parse_method("needs").build(poisson) == {"pde": 1.0, "bc": 100.0}
    wave = get_problem("wave")
    assert methods.parse_method("needs").build(wave) == dict.fromkeys(
        wave.term_names, 1.0
    )
    assert methods.parse_method("needs(weights={bc: 5})").build(wave) == {
        "pde": 1.0,
        "bc": 5,
        "ic": 1.0,
        "ic_t": 1.0,
    }


def test_solution_plot_2d(tmp_path):
    problem = get_problem("helmholtz")
    _, exact = problem.reference()
    path = tmp_path / "s.png"
    plots.solution_plot(path, problem, exact + 0.01, "test")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_table_relative_time_without_equal():
    runs = [
        dict(
            problem="p",
            preset="quick",
            method=m,
            seed=s,
            steps=10,
            seconds_per_step=t,
            cpu_seconds_per_step=2 * t,
            final_rel_l2=e,
            best_rel_l2=e,
            final_weights={"a": e, "b": 1 - e},
        )
        for m, t in (("x", 1.0), ("y", 3.0))
        for s, e in ((0, 0.1), (1, 0.3), (2, 0.2))
    ]
    text = report.table(runs, "p", ["x", "y"])
    assert "time/step vs x" in text
    # Median 0.2 of (0.1, 0.3, 0.2); y is 3x slower than x in wall and CPU time.
    assert "| `y` | 0.2 [0.1-0.3] | 0.2 [0.1-0.3] | 3.00, 3.00 (3e+03 ms) |" in text
    assert np.isclose(report.summary(runs, "p", ["y"])[0]["seconds_per_step"], 3.0)
    # The weights shown are those of the median seed (seed 2, error 0.2).
    assert text.rstrip().endswith("| a 0.2, b 0.8 |")


def test_seconds_per_step_leaves_out_the_first_chunk():
    from benchmarks.train import RunResult

    result = RunResult(
        steps=np.asarray([10, 20, 30]),
        errors=np.ones(3),
        losses={},
        weights={},
        train_seconds=3.5,
        compile_seconds=0.0,
        params=None,
        graphdef=None,
        skipped_updates=0,
        adam_steps=30,
        chunk_seconds=(2.5, 0.4, 0.6),
    )
    # (0.4 + 0.6) s over the 20 steps of chunks 2 and 3: 0.05 s per step.
    assert result.seconds_per_step == pytest.approx(0.05)
    one = dataclasses.replace(result, adam_steps=10, chunk_seconds=(2.0,))
    assert one.seconds_per_step == pytest.approx(0.2)  # 2.0 s / 10 steps


def test_summary_matrix_by_hand(tmp_path):
    from benchmarks import summary

    runs = [
        dict(problem="p", method=m, seed=s, adam_steps=10, final_rel_l2=e)
        for m, errors in {"equal": [0.4, 0.2, 0.3], "a": [0.1, 0.2, 0.9]}.items()
        for s, e in enumerate(errors)
    ] + [
        dict(problem="q", method="equal", seed=0, adam_steps=5, final_rel_l2=1.0),
        dict(problem="q", method="b", seed=0, adam_steps=5, final_rel_l2=0.5),
        dict(problem="q", method="b", seed=1, adam_steps=5, final_rel_l2=float("nan")),
        dict(problem="q", method="b", seed=2, adam_steps=5, final_rel_l2=float("nan")),
    ]
    (tmp_path / "runs.json").write_text(json.dumps({"runs": runs}))
    text = summary.matrix(summary.load([tmp_path]))
    # Medians: equal 0.3, a 0.2 (0.67 x equal, the best on p); q has equal only.
    assert "| method | p (10 steps) | q (5 steps) |" in text
    assert "| `equal` | 0.3 | **1** |" in text
    assert "| `a` | **0.2 (0.67x)** | - |" in text
    # Two of three seeds of b ended in NaN: the median is a diverged run.
    assert "| `b` | - | diverged (2 of 3 seeds NaN) |" in text
