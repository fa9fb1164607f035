"""Batched lesions: several lesions through LMNet / LINet + VQ in one batch equal one-at-a-time with the same seeds."""

from __future__ import annotations

import pytest
import torch

from ld_augment.engines.diffusion.sampling import inpaint_linet, sample_lmnet
from ld_augment.nets import LINET_TINY, LMNET_TINY, VQ_TINY, UNet3D, VQModel3D

LESIONS = 3


def _random_weights(module: torch.nn.Module) -> torch.nn.Module:
    """Random non-zero weights everywhere (the zero-initialised output layers would make eps identically 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def lmnet() -> UNet3D:
    return _random_weights(UNet3D(LMNET_TINY))


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "sde-dpmsolver++"])
def test_lmnet_batch_equals_lesions_alone(lmnet: UNet3D, sampler: str) -> None:
    g = torch.Generator().manual_seed(1)
    cond = torch.rand(LESIONS, 3, 4, 8, 8, generator=g)  # each lesion its own crop ...
    context = torch.randn(LESIONS, 3, 64, generator=g)  # ... and its own text
    seeds = [7, 8, 9]
    batched = sample_lmnet(lmnet, cond, context, steps=5, eta=1.0, generator=_gens(seeds), sampler=sampler)
    assert batched.shape == (LESIONS, 1, 4, 8, 8)
    for k, seed in enumerate(seeds):
        alone = sample_lmnet(lmnet, cond[k : k + 1], context[k : k + 1], steps=5, eta=1.0,
                             generator=torch.Generator().manual_seed(seed), sampler=sampler)
        torch.testing.assert_close(batched[k : k + 1], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)  # the rows really differ


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_linet_batch_equals_lesions_alone(sampler: str) -> None:
    linet, vq = _random_weights(UNet3D(LINET_TINY)), _random_weights(VQModel3D(VQ_TINY))
    g = torch.Generator().manual_seed(2)
    image = torch.rand(LESIONS, 1, 16, 16, 16, generator=g)
    mask = (torch.rand(LESIONS, 1, 8, 8, 8, generator=g) > 0.7).float()
    seeds = [3, 4, 5]
    batched = inpaint_linet(linet, vq, image, mask, None, steps=4, eta=1.0, generator=_gens(seeds), sampler=sampler)
    assert batched.shape == image.shape
    for k, seed in enumerate(seeds):
        alone = inpaint_linet(linet, vq, image[k : k + 1], mask[k : k + 1], None, steps=4, eta=1.0,
                              generator=torch.Generator().manual_seed(seed), sampler=sampler)
        torch.testing.assert_close(batched[k : k + 1], alone, rtol=1e-4, atol=1e-4)


def test_seeds_not_batch_position_decide_a_lesion(lmnet: UNet3D) -> None:
    """Reordering the batch reorders the results: a lesion's result follows its generator, not its row."""
    g = torch.Generator().manual_seed(3)
    cond, context = torch.rand(2, 3, 4, 8, 8, generator=g), torch.randn(2, 3, 64, generator=g)
    ab = sample_lmnet(lmnet, cond, context, steps=4, eta=1.0, generator=_gens([1, 2]))
    ba = sample_lmnet(lmnet, cond.flip(0), context.flip(0), steps=4, eta=1.0, generator=_gens([2, 1]))
    torch.testing.assert_close(ab, ba.flip(0), rtol=1e-4, atol=1e-5)
