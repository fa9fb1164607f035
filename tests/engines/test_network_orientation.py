"""Released networks were trained on LPS-ordered arrays; our grid is RAS. The engines mirror crops in and out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ld_augment.engines import LesionContext, create_mask_engine, create_texture_engine
from ld_augment.engines.diffusion.crops import to_network_axes
from ld_augment.errors import ConfigError
from ld_augment.nets import LINET_TINY, LMNET_TINY, VQ_TINY, build_network, save_checkpoint
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import LesionReport
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID

SHAPE = (40, 36, 32)
OPTS = {"encoder": "vocab", "steps": 2, "crop": (16, 16, 16)}


@pytest.fixture(scope="module")
def lmnet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("orient") / "lmnet.pt"
    return save_checkpoint(path, build_network(LMNET_TINY), LMNET_TINY, encoder_id=VOCAB_ID)


@pytest.fixture(scope="module")
def ctx() -> LesionContext:
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (17, 19, 15), (12, 11, 10))) <= 1.0
    ct = np.where(organ, 60.0, -100.0).astype(np.float32)
    ct[:, :, :2], ct[:, :, -2:] = -1000.0, 900.0
    return LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * 5, organ_mask=organ, organ_name="liver",
                         spacing=(1.0, 1.0, 1.0), occupied=np.zeros(SHAPE, bool))


def _captured_input(engine, ctx) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = engine.net.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    report = LesionReport(organ_id=5).with_values(shape="round-like", size=(8, 8, 8))
    try:
        engine.generate_mask(ctx, BBox((14, 20, 15), (8, 8, 8)), report, np.random.default_rng(0))
    except ConfigError:
        pass  # a random network may draw nothing usable; only its input matters here
    finally:
        handle.remove()
    return seen[0]


def test_lps_network_sees_the_crop_mirrored_in_its_first_two_axes(lmnet_ckpt, ctx) -> None:
    ras = create_mask_engine("diffusion", checkpoint=lmnet_ckpt, **OPTS)
    lps = create_mask_engine("diffusion", checkpoint=lmnet_ckpt, network_orientation="LPS", **OPTS)
    assert ras.provenance()["options"]["network_orientation"] == "RAS"
    assert lps.provenance()["options"]["network_orientation"] == "LPS"
    a, b = _captured_input(ras, ctx), _captured_input(lps, ctx)
    # condition channels (organ map, organ mask, bbox) are the same crop, mirrored in x and y
    assert torch.equal(torch.flip(a[:, 1:], dims=(2, 3)), b[:, 1:])
    assert not torch.equal(a[:, 1:], b[:, 1:])


def test_mirroring_is_its_own_inverse() -> None:
    arr = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(to_network_axes(to_network_axes(arr, "LPS"), "LPS"), arr)
    assert to_network_axes(arr, "RAS") is arr


def test_released_files_default_to_lps_and_bad_values_are_refused(tmp_path, lmnet_ckpt) -> None:
    torch.manual_seed(0)
    unet, vq = build_network(LINET_TINY), build_network(VQ_TINY)
    state = {"model." + k: v for k, v in unet.state_dict().items()}
    state.update({"first_stage_model." + k: v for k, v in vq.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "LINet.ckpt")
    engine = create_texture_engine("diffusion", lightning_checkpoint=tmp_path / "LINet.ckpt", config=LINET_TINY,
                                   vq_config=VQ_TINY, steps=1, crop=(16, 16, 16))
    assert engine.provenance()["options"]["network_orientation"] == "LPS"
    with pytest.raises(ConfigError, match="network_orientation"):
        create_mask_engine("diffusion", checkpoint=lmnet_ckpt, network_orientation="XYZ", **OPTS)

