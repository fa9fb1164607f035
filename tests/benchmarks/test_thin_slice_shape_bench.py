"""The thin-slice shape benchmark's verdict: its controls must fail it, and masks like the real ones pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_thin_slice_shape.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # it imports bench_lidc_compare and bench_edge_profile beside it
    spec = importlib.util.spec_from_file_location("ld_bench_thin_slice_shape", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lobulated(diameter: float, seed: int, bench) -> dict:
    """A ball with smooth low-order lobes (no voxel-scale notches): what an imaged nodule's mask looks like."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    n = int(diameter / 2) + 5
    grid = np.indices((2 * n + 1,) * 3) - n
    radius = np.sqrt((grid**2).sum(axis=0))
    lobes = ndimage.gaussian_filter(rng.standard_normal(radius.shape), 2.0)
    lobes *= 0.9 / lobes.std()
    return bench.shape_row(radius + lobes <= diameter / 2)


def test_controls_fail_against_lobulated_masks_that_pass(bench) -> None:
    sizes = [5.0, 5.5, 6.0, 6.5, 8.0, 9.0, 12.0, 14.0]
    real = [_lobulated(d, s, bench) for s in range(6) for d in sizes]
    like_real = [_lobulated(d, 100 + s, bench) for s in range(3) for d in sizes]
    assert all(bench.inside(like_real, real).values())
    for name, rows in bench.control_rows(sizes * 2, seed=0).items():
        assert not all(bench.inside(rows, real).values()), name
    balls, ragged = (bench.medians(rows) for rows in bench.control_rows(sizes, seed=0).values())
    assert balls["surface_roughness"] < bench.medians(real)["surface_roughness"] < ragged["surface_roughness"]
