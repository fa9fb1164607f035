"""DDIM step and loops against the DDIM/DDPM formulas (goldens: tests/engines/test_reference_sampling.py)."""

from __future__ import annotations

import pytest
import torch

from ld_augment.diffusion import (
    DDIMSchedule,
    DDPMSchedule,
    ddim_step,
    paste_known,
    q_sample,
    sample_ddim,
    sample_masked_ddim,
)

SHAPE = (2, 3, 4, 5, 6)


@pytest.fixture(scope="module")
def ddpm() -> DDPMSchedule:
    return DDPMSchedule.create()


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _toy_model(out_channels: int | None = None):
    """A fixed nonlinear eps-model that depends on x, t and context (stands in for a UNet)."""

    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        scale = (t.float() / 1000).reshape(-1, *([1] * (x.ndim - 1)))
        out = torch.tanh(x * 0.7 + scale) + (0.0 if context is None else context.mean())
        return out if out_channels is None else out[:, :out_channels]

    return fn


def _oracle(ddpm: DDPMSchedule, x0: torch.Tensor):
    """Returns the exact eps for which x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""

    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        a = ddpm.alphas_cumprod.double()[t].reshape(-1, *([1] * (x.ndim - 1)))
        return ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    return fn


def test_eta0_is_deterministic_and_ignores_generator(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=0.0)
    x_T, ctx = _randn(0, *SHAPE), _randn(1, 2, 3, 8)
    a = sample_ddim(_toy_model(), x_T, sched, context=ctx, generator=torch.Generator().manual_seed(1)).sample
    b = sample_ddim(_toy_model(), x_T, sched, context=ctx, generator=torch.Generator().manual_seed(2)).sample
    assert torch.equal(a, b)


def test_eta1_noise_comes_from_the_generator(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=1.0)
    x_T = _randn(0, *SHAPE)
    def run(seed: int) -> torch.Tensor:
        return sample_ddim(_toy_model(), x_T, sched, generator=torch.Generator().manual_seed(seed)).sample

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_eta0_recovers_x0_from_true_noise(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=0.0)
    x0, eps = _randn(0, *SHAPE), _randn(1, *SHAPE)
    t0 = int(sched.timesteps[-1])
    x_T = q_sample(x0, torch.full((SHAPE[0],), t0), eps, ddpm)
    out = sample_ddim(_oracle(ddpm, x0), x_T, sched, record_intermediates=True)
    for pred in out.pred_x0:
        torch.testing.assert_close(pred, x0, rtol=0, atol=2e-4)
    # The uniform '+1' schedule ends on abar_0 (not abar = 1): the last sample is x0 noised to t=0.
    torch.testing.assert_close(out.sample, q_sample(x0, torch.zeros(SHAPE[0], dtype=torch.long), eps, ddpm),
                               rtol=0, atol=2e-5)
    one_step = ddim_step(eps, sched.num_steps - 1, x_T, sched)
    torch.testing.assert_close(one_step.pred_x0, x0, rtol=0, atol=2e-4)


@pytest.mark.parametrize("t", [1, 2, 500, 999])
def test_full_step_count_eta1_step_is_ddpm_posterior(ddpm: DDPMSchedule, t: int) -> None:
    """One-step-per-DDPM-step DDIM with eta=1: mean = coef1 * x0_pred + coef2 * x_t, std = posterior std."""
    sched = DDIMSchedule.from_timesteps(ddpm, torch.arange(1, ddpm.num_timesteps), eta=1.0)
    index = int((sched.timesteps == t).nonzero())
    x_t, eps, noise = _randn(0, *SHAPE), _randn(1, *SHAPE), _randn(2, *SHAPE)
    mean_step = ddim_step(eps, index, x_t, sched, noise=torch.zeros(SHAPE))
    posterior_mean = ddpm.posterior_mean_coef1[t] * mean_step.pred_x0 + ddpm.posterior_mean_coef2[t] * x_t
    torch.testing.assert_close(mean_step.prev_sample, posterior_mean, rtol=0, atol=5e-5)
    noisy = ddim_step(eps, index, x_t, sched, noise=noise)
    std = torch.exp(0.5 * ddpm.posterior_log_variance_clipped[t])
    torch.testing.assert_close(noisy.prev_sample - mean_step.prev_sample, std * noise, rtol=1e-4, atol=1e-6)


def test_step_is_pure_and_requires_noise_when_stochastic(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=1.0)
    x, eps = _randn(0, *SHAPE), _randn(1, *SHAPE)
    x_copy, eps_copy = x.clone(), eps.clone()
    first = ddim_step(eps, 3, x, sched, noise=torch.zeros(SHAPE))
    second = ddim_step(eps, 3, x, sched, noise=torch.zeros(SHAPE))
    assert torch.equal(x, x_copy) and torch.equal(eps, eps_copy)
    assert torch.equal(first.prev_sample, second.prev_sample)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(eps, 3, x, sched)
    with pytest.raises(IndexError):
        ddim_step(eps, 10, x, sched, noise=torch.zeros(SHAPE))


def test_loop_feeds_concat_context_and_descending_timesteps(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=0.0)
    seen: list[tuple[tuple[int, ...], list[int]]] = []
    calls: list[tuple[int, int]] = []

    def model(x, t, context):
        seen.append((tuple(x.shape), t.tolist()))
        assert context is not None
        return torch.zeros(x.shape[0], 1, *x.shape[2:])

    cond = torch.zeros(2, 3, 4, 5, 6)
    out = sample_ddim(model, _randn(0, 2, 1, 4, 5, 6), sched, context=torch.zeros(2, 3, 8), concat=cond,
                      callback=lambda i, t, x, p: calls.append((i, t)))
    assert out.timesteps == list(range(901, 0, -100))
    assert [s[0] for s in seen] == [(2, 4, 4, 5, 6)] * 10
    assert [s[1] for s in seen] == [[t, t] for t in out.timesteps]
    assert calls == list(enumerate(out.timesteps))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_masked_sampling_never_changes_known_latents(ddpm: DDPMSchedule, eta: float) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=eta)
    channels = SHAPE[1]
    x_T, known = _randn(0, *SHAPE), _randn(1, *SHAPE)
    mask = (torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=torch.Generator().manual_seed(2)) > 0.6).float()
    inputs: list[torch.Tensor] = []

    def model(x, t, context):  # C+1 -> C+1 channels (eps + mask logit), as LINet
        inputs.append(x)
        assert torch.equal(x[:, channels:], mask)
        known_region = (mask == 0).expand(-1, channels, *mask.shape[2:])
        assert torch.equal(x[:, :channels][known_region], known[known_region]), "model saw a non-clean known latent"
        return torch.cat([torch.tanh(x[:, :channels]), x[:, channels:] * 3], dim=1)

    out = sample_masked_ddim(model, x_T, known, mask, sched, generator=torch.Generator().manual_seed(3),
                             record_intermediates=True)
    assert len(inputs) == 10 and inputs[0].shape[1] == channels + 1
    assert out.sample.shape == (SHAPE[0], channels + 1, *SHAPE[2:])
    assert torch.equal(out.sample[:, channels:], mask)
    known_region = (mask == 0).expand_as(known)
    assert torch.equal(out.sample[:, :channels][known_region], known[known_region])
    assert not torch.equal(out.sample[:, :channels][~known_region], x_T[~known_region])
    assert torch.equal(out.sample[:, :channels], paste_known(out.intermediates[-1], known, mask))


def test_masked_sampling_rejects_bad_shapes(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10)
    x = _randn(0, *SHAPE)
    with pytest.raises(ValueError, match="mask"):
        sample_masked_ddim(_toy_model(), x, x, torch.ones(2, 3, 4, 5, 6), sched)
    with pytest.raises(ValueError, match="known"):
        sample_masked_ddim(_toy_model(), x, x[:1], torch.ones(2, 1, 4, 5, 6), sched)


def test_half_precision_inputs_step_in_float32(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10)
    x, eps = _randn(0, *SHAPE), _randn(1, *SHAPE)
    ref = ddim_step(eps, 9, x, sched)
    half = ddim_step(eps.half(), 9, x.half(), sched)
    assert half.prev_sample.dtype == torch.float32
    torch.testing.assert_close(half.prev_sample, ref.prev_sample, rtol=0, atol=0.05 * ref.prev_sample.abs().max().item())


def test_masked_sampling_accepts_a_bool_mask(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10)
    x_T, known = _randn(0, *SHAPE), _randn(1, *SHAPE)
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:], dtype=torch.bool)
    mask[..., :2, :, :] = True
    as_bool = sample_masked_ddim(_toy_model(SHAPE[1]), x_T, known, mask, sched).sample
    as_float = sample_masked_ddim(_toy_model(SHAPE[1]), x_T, known, mask.float(), sched).sample
    assert torch.equal(as_bool, as_float)
