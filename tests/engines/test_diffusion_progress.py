"""Diffusion sampling takes minutes per lesion on CPU: long runs show a per-step progress bar."""

from __future__ import annotations

from ld_augment.engines.diffusion.sampling import PROGRESS_MIN_STEPS, step_progress


def test_long_sampling_runs_show_a_progress_bar(capsys) -> None:
    with step_progress(PROGRESS_MIN_STEPS - 1, "x") as cb:
        assert cb is None
    with step_progress(PROGRESS_MIN_STEPS, "LMNet mask") as cb:
        for _ in range(PROGRESS_MIN_STEPS):
            cb(0, 1, None, None)
    assert "LMNet mask" in capsys.readouterr().err
