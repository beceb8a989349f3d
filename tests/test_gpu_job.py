"""The GPU job runs the paper presets and skips what would pass its deadline."""

from __future__ import annotations

from benchmarks import gpu


def test_every_pinn_job_is_a_paper_preset_of_a_known_problem(tmp_path):
    from benchmarks.problems import PROBLEMS

    names = [name for name, _, _ in gpu.JOBS]
    assert names[0] == "overhead" and "wave" in names
    for name, args, _ in gpu.JOBS[1:]:
        cmd = gpu.command(name, args, False, tmp_path)
        assert cmd[cmd.index("--preset") + 1] == "paper"
        assert cmd[cmd.index("--problem") + 1] in PROBLEMS
        assert cmd[cmd.index("--out") + 1] == str(tmp_path / name)
        assert "--steps" not in cmd  # the paper's budget


def test_a_job_that_would_pass_the_deadline_is_skipped_and_said(tmp_path):
    log = gpu.main(
        ["--deadline", "1", "--only", "poisson,wave", "--out", str(tmp_path)]
    )
    assert log == []  # nothing started
    readme = (tmp_path / "README.md").read_text()
    assert "Skipped for time: poisson (estimated 20 s, 1 s left)" in readme
    assert "wave (estimated 150 s" in readme
