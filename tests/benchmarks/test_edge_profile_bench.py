"""The thin-slice edge benchmark's measurement: it must tell a step edge from an imaged one and from a halo."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_edge_profile.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # it imports bench_lidc_compare beside it
    spec = importlib.util.spec_from_file_location("ld_bench_edge_profile", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nodule(blur_fwhm_mm: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices((40, 40, 40))
    ball = sum((grid[a] - 20.3) ** 2 for a in range(3)) <= 5.0**2  # 10 mm, 1 mm grid
    change = np.where(ball, 800.0, 0.0)
    if blur_fwhm_mm:
        change = np.where(ball, change, ndimage.gaussian_filter(change, blur_fwhm_mm / 2.355))
    noise = np.random.default_rng(0).normal(0.0, 10.0, ball.shape)
    return (-820.0 + change + noise).astype(np.float32), ball


def test_edge_shares_rise_with_the_blur_beyond_the_label(bench) -> None:
    (step_out, step_in), (psf_out, _), (halo_out, _) = (bench.edge_shares(*_nodule(b)) for b in (0.0, 1.25, 4.0))
    assert abs(step_out) < 0.03 and step_in > 0.95  # a step: nothing outside, all of it inside
    assert 0.05 < psf_out < 0.2 < halo_out  # the scan's blur; a 4 mm halo far past real nodules (LIDC IQR ~0.06-0.16)


def test_edge_shares_tell_a_ramp_across_the_label_from_a_step_at_it(bench) -> None:
    """A nodule blurred on both sides of its surface and labelled to the ramp's foot (as LIDC's readers do) has
    about half its contrast in the label's outer 1 mm; blurred beyond its label only, all of it."""
    grid = np.indices((40, 40, 40))
    ball = sum((grid[a] - 20.3) ** 2 for a in range(3)) <= 5.0**2
    change = ndimage.gaussian_filter(np.where(ball, 800.0, 0.0), 1.85 / 2.355)
    label = ball | (change >= 0.3 * 800.0)
    ct = (-820.0 + change + np.random.default_rng(0).normal(0.0, 10.0, ball.shape)).astype(np.float32)
    ramp_out, ramp_in = bench.edge_shares(ct, label)
    _, step_in = bench.edge_shares(*_nodule(1.25))
    assert 0.4 < ramp_in < 0.75 < 0.95 < step_in and 0.03 < ramp_out < 0.2


def test_edge_shares_skip_what_has_no_edge_to_measure(bench) -> None:
    ct, ball = _nodule(0.0)
    assert bench.edge_shares(np.where(ball, -750.0, ct).astype(np.float32), ball) is None  # 70 HU: too faint
    tiny = np.zeros_like(ball)
    tiny[20:22, 20:22, 20:22] = True
    assert bench.edge_shares(ct, tiny) is None
