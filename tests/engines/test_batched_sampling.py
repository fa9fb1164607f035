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


def test_mask_engine_batch_equals_lesions_one_after_another(tmp_path, monkeypatch) -> None:
    """generate_masks == generate_mask per lesion with occupied grown by each result, the same rngs."""
    import numpy as np

    from ld_augment.engines import LesionContext, create_mask_engine
    from ld_augment.nets import save_checkpoint
    from ld_augment.placement.bboxes import BBox
    from ld_augment.reports import LesionReport
    from ld_augment.text.offline import ENCODER_ID

    ckpt = save_checkpoint(tmp_path / "lmnet.pt", _random_weights(UNet3D(LMNET_TINY)), LMNET_TINY,
                           encoder_id=ENCODER_ID)
    shape = (40, 40, 40)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - 20) / a) ** 2 for g, a in zip(grid, (16, 15, 14))) <= 1.0
    ct = np.where(organ, 60.0, -100.0).astype(np.float32)
    ctx = LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * 5, organ_mask=organ, organ_name="liver",
                        spacing=(1.0, 1.0, 1.0), occupied=np.zeros(shape, bool))
    # overlapping boxes (so earlier lesions matter), one larger than the crop (another input shape)
    boxes = [BBox((18, 20, 20), (10, 10, 10)), BBox((22, 20, 20), (10, 10, 10)), BBox((20, 20, 20), (18, 18, 18))]
    reports = [LesionReport(organ_id=5).with_values(shape="round-like", size=b.size) for b in boxes]
    engine = create_mask_engine("diffusion", checkpoint=ckpt, encoder="vocab", steps=4, crop=(16, 16, 16),
                                min_voxels=1, max_batch=2)
    import ld_augment.engines.diffusion.mask as mask_module

    batch_sizes: list[int] = []

    def counting(unet, cond, *args, **kwargs):
        batch_sizes.append(cond.shape[0])
        return sample_lmnet(unet, cond, *args, **kwargs)

    monkeypatch.setattr(mask_module, "sample_lmnet", counting)
    batched = engine.generate_masks(ctx, boxes, reports, [np.random.default_rng(s) for s in (1, 2, 3)])
    assert batch_sizes == [2, 1]  # the two same-sized crops in one call, the large crop in its own
    occupied = np.zeros(shape, bool)
    for box, report, seed, got in zip(boxes, reports, (1, 2, 3), batched):
        alone_ctx = LesionContext(ct=ct, organ_seg=ctx.organ_seg, organ_mask=organ, organ_name="liver",
                                  spacing=ctx.spacing, occupied=occupied.copy())
        alone = engine.generate_mask(alone_ctx, box, report, np.random.default_rng(seed))
        assert alone.any() and np.array_equal(got, alone)
        assert not (got & occupied).any()
        occupied |= alone


def test_texture_engine_batch_equals_lesions_one_after_another(tmp_path, monkeypatch) -> None:
    """render_many == render per lesion on the previous result (occupied grown), the same rngs."""
    import numpy as np

    import ld_augment.engines.diffusion.texture as texture_module
    from ld_augment.engines import LesionContext, create_texture_engine
    from ld_augment.nets import save_checkpoint
    from ld_augment.reports import LesionReport
    from ld_augment.text.offline import ENCODER_ID

    linet = save_checkpoint(tmp_path / "linet.pt", _random_weights(UNet3D(LINET_TINY)), LINET_TINY,
                            encoder_id=ENCODER_ID)
    vq = save_checkpoint(tmp_path / "vq.pt", _random_weights(VQModel3D(VQ_TINY)), VQ_TINY, encoder_id=None)
    shape = (48, 48, 48)
    rng = np.random.default_rng(0)
    ct = (60.0 + 10.0 * rng.standard_normal(shape)).astype(np.float32)
    organ = np.ones(shape, bool)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]

    def ball(centre) -> np.ndarray:
        return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 9

    # two lesions far apart share a call; the third overlaps the first one's window: next call
    lesions = [ball((10, 10, 10)), ball((38, 38, 38)), ball((15, 12, 12)) & ~ball((10, 10, 10))]
    reports = [LesionReport(organ_id=5)] * 3
    engine = create_texture_engine("diffusion", checkpoint=linet, vq_checkpoint=vq, steps=4, crop=(16, 16, 16))
    calls: list[int] = []

    def counting(unet, vq_module, image, *args, **kwargs):
        calls.append(image.shape[0])
        return inpaint_linet(unet, vq_module, image, *args, **kwargs)

    monkeypatch.setattr(texture_module, "inpaint_linet", counting)
    ctx = LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * 5, organ_mask=organ, organ_name="liver",
                        spacing=(1.0, 1.0, 1.0), occupied=np.zeros(shape, bool))
    batched = engine.render_many(ctx, lesions, reports, [np.random.default_rng(s) for s in (1, 2, 3)])
    assert calls == [2, 1]
    current, occupied = ct, np.zeros(shape, bool)
    for lesion, report, seed in zip(lesions, reports, (1, 2, 3)):
        step_ctx = LesionContext(ct=current, organ_seg=ctx.organ_seg, organ_mask=organ, organ_name="liver",
                                 spacing=ctx.spacing, occupied=occupied.copy())
        current = engine.render(step_ctx, lesion, report, np.random.default_rng(seed))
        occupied |= lesion
    assert not np.array_equal(batched, ct)
    np.testing.assert_allclose(batched, current, rtol=1e-4, atol=0.05)  # HU; float reassociation in batched convs
    assert np.array_equal(batched == ct, current == ct)  # the same voxels written


def test_sample_in_batches_groups_by_shape_chunks_and_keeps_order() -> None:
    from ld_augment.engines.diffusion.batching import sample_in_batches
    from ld_augment.errors import ConfigError

    shapes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3)]
    items = [(torch.full((1, *s), float(i)), None, torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    calls: list[list[float]] = []

    def sample(x, context, gens):
        assert context is None and len(gens) == x.shape[0]
        calls.append([float(v) for v in x[:, 0, 0]])
        return x * 10

    out = sample_in_batches(items, sample, max_batch=2)
    assert calls == [[0.0, 2.0], [3.0], [1.0, 4.0]]
    assert [float(o[0, 0, 0]) for o in out] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert all(o.shape == (1, *s) for o, s in zip(out, shapes))
    with pytest.raises(ConfigError, match="max_batch"):
        sample_in_batches(items, sample, max_batch=0)


def test_lockstep_batcher_pools_threads_deterministically_and_survives_a_failure() -> None:
    """Three threads (cases) with 2, 1 and 3 calls: round r pools every live thread's r-th call, whatever the
    timing; each gets what it gets alone; a thread that fails leaves without holding the others up."""
    import random
    import threading
    import time

    from ld_augment.engines.diffusion.batching import LockstepBatcher, sample_in_batches

    seen: list[int] = []

    def sample(x, context, gens, offset):
        seen.append(x.shape[0])
        noise = torch.stack([torch.rand(1, generator=g) for g in gens])
        return x * 2 + offset + noise.view(-1, 1, 1)

    key = object()

    def items(case: int, call: int) -> list:
        return [(torch.full((1, 2, 2), float(10 * case + call)), None, torch.Generator().manual_seed(case * 7 + call),
                 torch.full((1, 1, 1), 0.5))]

    calls = {0: 2, 1: 1, 2: 3}
    alone = {(c, k): sample_in_batches(items(c, k), sample, max_batch=8)[0] for c in calls for k in range(calls[c])}
    for trial in range(3):  # random delays: the pooling must not depend on timing
        seen.clear()
        batcher = LockstepBatcher(4)
        pooled: dict[tuple[int, int], torch.Tensor] = {}

        def case(c: int) -> None:
            with batcher.participate(c):
                if c == 3:  # a case that fails before its first call: it leaves, nobody waits for it
                    time.sleep(random.random() * 0.01)
                    return
                for k in range(calls[c]):
                    time.sleep(random.random() * 0.01)
                    pooled[(c, k)] = sample_in_batches(items(c, k), sample, max_batch=8, pool_key=key)[0]

        threads = [threading.Thread(target=case, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert seen == [3, 2, 1]  # round 1: all three cases, round 2: cases 0 and 2, round 3: case 2
        for k, value in alone.items():
            torch.testing.assert_close(pooled[k], value)
