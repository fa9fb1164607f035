"""DDPM/DDIM schedules: bit-equal to the original's stored buffers and consistent with the closed forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ld_augment.diffusion import DDIMSchedule, DDPMSchedule, ddim_timesteps, make_beta_schedule
from ld_augment.errors import ConfigError


@pytest.fixture(scope="module")
def ddpm() -> DDPMSchedule:
    return DDPMSchedule.create("linear", timesteps=1000, linear_start=0.0015, linear_end=0.0195)


def test_ddpm_buffers_equal_reference(reference_data: Path, ddpm: DDPMSchedule) -> None:
    ref = torch.load(reference_data / "schedules" / "ddpm_schedule.pt", weights_only=True)
    assert set(ref) == set(DDPMSchedule.BUFFERS)
    for name, expected in ref.items():
        actual = getattr(ddpm, name)
        assert actual.dtype == expected.dtype, name
        assert torch.equal(actual, expected), f"{name}: max diff {(actual - expected).abs().max().item():.3g}"


@pytest.mark.parametrize("key", ["S200_eta0", "S200_eta1", "S10_eta0", "S10_eta1"])
def test_ddim_schedules_equal_reference(reference_data: Path, ddpm: DDPMSchedule, key: str) -> None:
    ref = torch.load(reference_data / "schedules" / "ddim_schedules.pt", weights_only=True)[key]
    steps, eta = int(key[1 : key.index("_")]), float(key.split("eta")[1])
    ours = DDIMSchedule.from_ddpm(ddpm, steps, eta)
    for name, expected in ref.items():
        actual = getattr(ours, name.removeprefix("ddim_"))
        assert actual.dtype == expected.dtype, name
        assert torch.equal(actual, expected), f"{name}: max diff {(actual - expected).abs().max().item():.3g}"


def test_linear_betas_are_linear_in_sqrt_beta() -> None:
    betas = make_beta_schedule("linear", timesteps=1000, linear_start=0.0015, linear_end=0.0195)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    steps = betas.sqrt().diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps.mean().item()), rtol=1e-9, atol=0)


def test_ddpm_buffers_follow_closed_forms(ddpm: DDPMSchedule) -> None:
    b = ddpm.betas.double()
    ac = torch.cumprod(1 - b, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    close = dict(rtol=2e-6, atol=0)
    torch.testing.assert_close(ddpm.alphas_cumprod.double(), ac, **close)
    torch.testing.assert_close(ddpm.alphas_cumprod_prev.double(), ac_prev, **close)
    torch.testing.assert_close(ddpm.sqrt_alphas_cumprod.double() ** 2, ac, **close)
    torch.testing.assert_close(ddpm.sqrt_one_minus_alphas_cumprod.double() ** 2, 1 - ac, **close)
    torch.testing.assert_close(ddpm.sqrt_recip_alphas_cumprod.double(), 1 / ac.sqrt(), **close)
    post_var = b * (1 - ac_prev) / (1 - ac)
    torch.testing.assert_close(ddpm.posterior_variance.double(), post_var, **close)
    assert ddpm.posterior_variance[0].item() == 0.0
    torch.testing.assert_close(ddpm.posterior_log_variance_clipped[1:].double(), post_var[1:].log(), **close)
    # Posterior mean of q(x_{t-1}|x_t,x_0) at x_0 = x_t = 1 equals sqrt(abar_{t-1}) + ... : coefficients sum check.
    torch.testing.assert_close(ddpm.posterior_mean_coef1.double(), b * ac_prev.sqrt() / (1 - ac), **close)
    torch.testing.assert_close(ddpm.posterior_mean_coef2.double(), (1 - ac_prev) * (1 - b).sqrt() / (1 - ac), **close)
    assert torch.isfinite(ddpm.lvlb_weights).all() and ddpm.lvlb_weights[0] == ddpm.lvlb_weights[1]


def test_ddim_timesteps_uniform_with_offset() -> None:
    assert ddim_timesteps(10, 1000).tolist() == list(range(1, 1000, 100))
    assert ddim_timesteps(200, 1000).tolist() == list(range(1, 1000, 5))
    assert ddim_timesteps(400, 1000).tolist() == list(range(1, 1000, 2))  # stride 2: 500 steps, as the original
    for bad in (1000, 999, 501, 300):  # stride 1 or 3: the +1 offset would visit t=1000
        with pytest.raises(ConfigError, match="t=1000"):
            ddim_timesteps(bad, 1000)
    with pytest.raises(ConfigError):
        ddim_timesteps(0, 1000)


def test_ddim_alphas_prev_and_sigma_formula(ddpm: DDPMSchedule) -> None:
    sched = DDIMSchedule.from_ddpm(ddpm, 10, eta=0.5)
    ac = ddpm.alphas_cumprod
    assert torch.equal(sched.alphas, ac[sched.timesteps])
    assert sched.alphas_prev[0].item() == ac[0].item()
    assert torch.equal(sched.alphas_prev[1:].float(), ac[sched.timesteps[:-1]])
    a, ap = sched.alphas.double(), sched.alphas_prev
    expected = 0.5 * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()
    torch.testing.assert_close(sched.sigmas, expected, rtol=1e-6, atol=0)
    assert (DDIMSchedule.from_ddpm(ddpm, 10, eta=0.0).sigmas == 0).all()


def test_full_step_count_sigma_is_ddpm_posterior_std(ddpm: DDPMSchedule) -> None:
    """eta=1 with one DDIM step per DDPM step: sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t) (DDIM eq. 16)."""
    sched = DDIMSchedule.from_timesteps(ddpm, torch.arange(1, ddpm.num_timesteps), eta=1.0)
    # 1 - a_t/a_{t-1} = beta_t ~ 1.5e-3 is computed from float32-rounded alphas (relative error ~6e-8 / beta).
    torch.testing.assert_close(sched.sigmas**2, ddpm.posterior_variance[sched.timesteps].double(), rtol=1e-4, atol=0)


def test_from_timesteps_matches_from_ddpm_and_validates(ddpm: DDPMSchedule) -> None:
    a, b = DDIMSchedule.from_ddpm(ddpm, 50, 1.0), DDIMSchedule.from_timesteps(ddpm, ddim_timesteps(50), 1.0)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("timesteps", "alphas", "alphas_prev", "sigmas"))
    for bad in ([0, 5], [5, 3], [1, 1000], []):
        with pytest.raises(ConfigError):
            DDIMSchedule.from_timesteps(ddpm, torch.tensor(bad, dtype=torch.int64))


def test_bad_schedule_options_are_config_errors(ddpm: DDPMSchedule) -> None:
    with pytest.raises(ConfigError, match="linear"):
        make_beta_schedule("quadratic")
    with pytest.raises(ConfigError):
        DDIMSchedule.from_ddpm(ddpm, 10, eta=-1.0)
