"""LINet write-back: the intensity correction ignores padding and air (-3024 HU outside the field of view), corrects
a real VQ brightness bias, and the rim keeps the transition the network draws around the lesion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ld_augment.engines.diffusion.texture as texture_module
from ld_augment.engines import LesionContext, create_texture_engine
from ld_augment.engines.diffusion.intensity import denormalize_ct, normalize_ct
from ld_augment.reports import LesionReport

SHAPE = (40, 40, 40)
OUT_OF_FIELD = -3024.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster and exact


@pytest.fixture(scope="module")
def engine():
    return create_texture_engine("diffusion", config="linet_tiny", vq_config="vq_tiny", steps=1, crop=(16, 16, 16))


@pytest.fixture()
def ctx() -> LesionContext:
    rng = np.random.default_rng(0)
    ct = (60.0 + rng.normal(0, 8, SHAPE)).astype(np.float32)
    ct[:, :, 10:12] = OUT_OF_FIELD  # 2 of the window's 20 slices: 10 % padding outside the scanner's field
    ct[:, :, 12:14] = -1000.0  # air
    organ = np.zeros(SHAPE, bool)
    organ[8:32, 8:32, 14:32] = True
    return LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * 5, organ_mask=organ, organ_name="liver",
                         spacing=(1.0, 1.0, 1.0), occupied=np.zeros(SHAPE, bool))


def _lesion() -> np.ndarray:
    lesion = np.zeros(SHAPE, bool)
    lesion[18:22, 18:22, 18:22] = True
    return lesion


def _vq_with_bias(monkeypatch, hu_bias: float) -> None:
    """A perfect VQ round trip, plus a uniform brightness bias (in HU), instead of the networks."""
    def fake(unet, vq, image, mask, context, **kwargs):
        hu = denormalize_ct(image[0, 0].numpy()) + hu_bias
        return torch.from_numpy(normalize_ct(hu))[None, None]

    monkeypatch.setattr(texture_module, "inpaint_linet", fake)


def test_padding_at_minus_3024_does_not_shift_the_lesion(engine, ctx, monkeypatch) -> None:
    _vq_with_bias(monkeypatch, 0.0)
    lesion = _lesion()
    out = engine.render(ctx, lesion, LesionReport(organ_id=5), np.random.default_rng(0))
    # the old correction (whole crop, raw HU) would move the lesion by about -0.1 * 2024 HU
    window = ctx.ct[10:30, 10:30, 10:30]
    old_shift = window.mean() - np.clip(window, -1000, 1000).mean()
    assert old_shift < -150
    assert np.abs(out[lesion] - ctx.ct[lesion]).max() < 0.5


def test_a_vq_brightness_bias_is_corrected_from_body_voxels(engine, ctx, monkeypatch) -> None:
    _vq_with_bias(monkeypatch, 25.0)
    lesion = _lesion()
    out = engine.render(ctx, lesion, LesionReport(organ_id=5), np.random.default_rng(0))
    assert np.abs(out[lesion] - ctx.ct[lesion]).max() < 0.5
    uncorrected = create_texture_engine("diffusion", config="linet_tiny", vq_config="vq_tiny", steps=1,
                                        crop=(16, 16, 16), mean_shift=False)
    raw = uncorrected.render(ctx, lesion, LesionReport(organ_id=5), np.random.default_rng(0))
    assert np.mean(raw[lesion] - ctx.ct[lesion]) == pytest.approx(25.0, abs=0.5)


def test_rim_defaults_keep_the_change_within_their_reach(engine, ctx, monkeypatch) -> None:
    """A change that LINet spreads beyond the mask is written up to dilate (4) voxels unchanged, then ramps out."""
    from scipy import ndimage

    lesion = _lesion()
    distance = ndimage.distance_transform_edt(~lesion)

    def spread(unet, vq, image, mask, context, **kwargs):  # +100 HU everywhere: the rim decides what is kept
        return torch.from_numpy(normalize_ct(denormalize_ct(image[0, 0].numpy()) + 100.0))[None, None]

    monkeypatch.setattr(texture_module, "inpaint_linet", spread)
    out = create_texture_engine("diffusion", config="linet_tiny", vq_config="vq_tiny", steps=1, crop=(16, 16, 16),
                                mean_shift=False).render(ctx, lesion, LesionReport(organ_id=5), np.random.default_rng(0))
    change = out - ctx.ct
    body = ctx.ct > -500
    assert np.allclose(change[(distance <= 4) & body], 100.0, atol=0.5)
    assert np.all(change[distance > 8] == 0.0)
    ramp = change[(distance > 5) & (distance < 7) & body]
    assert 0 < ramp.min() and ramp.max() < 100
