"""Progress output for terminals and for log files (SLURM logs must not fill with \\r frames)."""

from __future__ import annotations

from megatron_ego.progress import LineProgress, progress


def test_not_a_terminal_gives_plain_lines_without_carriage_returns(capsys):
    bar = progress(total=4, desc="takes", unit="take", every_s=0.0)  # pytest's stderr: no tty
    assert isinstance(bar, LineProgress)
    for _ in range(4):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("takes: 1/4 takes (25%)")
    assert lines[-1].startswith("takes: 4/4 takes (100%)") and "left" not in lines[-1]


def test_lines_come_at_most_every_interval_and_once_at_the_end(capsys):
    bar = progress(total=1000, desc="steps", unit="step", every_s=3600.0)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    bar.close()  # a second close adds nothing
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steps: 1000/1000 steps (100%)")


def test_ranks_other_than_the_reporting_one_print_nothing(capsys):
    bar = progress(total=3, desc="takes", unit="take", enabled=False)
    bar.update(3)
    bar.close()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
