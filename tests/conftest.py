"""Shared fixtures. Real data comes through LD_TEST_DATA (default ../shared/data); tests skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ld_augment.settings import reference_dir, test_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = test_data_dir()
    if not (path / "ct").is_dir():
        pytest.skip(f"shared test data not found at {path} (set LD_TEST_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def reference_data() -> Path:
    path = reference_dir()
    if not (path / "tiny").is_dir():
        pytest.skip(f"reference goldens not found at {path} (set LD_TEST_DATA; reference/ sits beside data/)")
    return path


@pytest.fixture(scope="session")
def real_ct(shared_data: Path) -> Path:
    return shared_data / "ct" / "abdomen_ct_3mm_crop.nii.gz"


@pytest.fixture(scope="session")
def real_seg(shared_data: Path) -> Path:
    return shared_data / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"
