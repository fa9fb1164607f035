"""Released-mode inference edge cases beyond the LMNet goldens (those run in test_lmnet_selection: a box longer
than the crop along S, every box <= 50 voxels): LINet's fixed window around a lesion larger than the crop,
the <= 50-voxel fallback of the plan, and the per-network precision the original ran the released files in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ld_augment.engines import create_texture_engine
from ld_augment.engines.diffusion.selection import plan_boxes
from ld_augment.errors import ConfigError
from ld_augment.nets import LINET_TINY, VQ_TINY, build_network, resolve_precision

CROP = (32, 32, 32)


@pytest.fixture(scope="module")
def linet_file(tmp_path_factory) -> Path:
    """A released-layout LINet file (UNet under model., its VQ under first_stage_model.)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, vq = build_network(LINET_TINY), build_network(VQ_TINY)
    state = {"model." + k: v for k, v in unet.state_dict().items()}
    state.update({"first_stage_model." + k: v for k, v in vq.state_dict().items()})
    path = tmp_path_factory.mktemp("released") / "LINet.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def _engine(path: Path, **options):
    return create_texture_engine("diffusion", lightning_checkpoint=path, config=LINET_TINY, vq_config=VQ_TINY,
                                 steps=1, crop=CROP, **options)


def test_released_linet_keeps_the_fixed_window_for_a_large_lesion(linet_file: Path) -> None:
    lesion = np.zeros((48, 48, 48), bool)
    lesion[5:41, 8:44, 10:40] = True  # 30-36 voxels across: with its rim larger than the 32^3 crop
    released = _engine(linet_file)
    assert released.window == "fixed" and released.provenance()["options"]["window"] == "fixed"
    window = released._window(lesion)
    assert window.size == CROP  # the original's window, not one grown to the lesion
    grown = _engine(linet_file, window="grow")._window(lesion)
    assert all(s > c for s, c in zip(grown.size, CROP))  # our window holds the lesion and its rim
    small = np.zeros_like(lesion)
    small[22:26, 22:26, 22:26] = True
    assert released._window(small) == _engine(linet_file, window="grow")._window(small)  # same when it fits
    with pytest.raises(ConfigError, match="window"):
        _engine(linet_file, window="huge")


def test_plan_falls_back_to_the_largest_box_when_all_are_tiny() -> None:
    assert plan_boxes([36, 24], fallback_largest=True) == [0]
    assert plan_boxes([24, 36, 12], fallback_largest=True) == [1]
    assert plan_boxes([36, 24]) == []  # without the fallback (the old behaviour) nothing is drawn
    assert plan_boxes([60, 24], fallback_largest=True) == [0]  # a large enough box: the usual rule
    assert plan_boxes([], fallback_largest=True) == []


def test_released_precision_per_network() -> None:
    """auto on CUDA: the original's LMNet fp32 and LINet fp16 for released files, bf16 for ours; CPU fp32."""
    assert resolve_precision("auto", "cuda", "lmnet") == "fp32"
    assert resolve_precision("auto", "cuda", "linet") == "fp16"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu", "linet") == "fp32"
    assert resolve_precision("bf16", "cuda", "lmnet") == "bf16"  # opt-in stays possible
