"""Few-step solvers (DPM-Solver++, UniPC via diffusers) against the exact probability-flow ODE of Gaussian data."""

from __future__ import annotations

import pytest
import torch

from ld_augment.diffusion import (
    DDIMSchedule,
    DDPMSchedule,
    batch_randn,
    check_sampler,
    sample_ddim,
    sample_masked_ddim,
    sample_masked_solver,
    sample_solver,
)
from ld_augment.errors import ConfigError

SHAPE = (3, 2, 4, 4, 4)
MU, STD = 0.3, 0.5  # data x0 ~ N(MU, STD^2) per element


@pytest.fixture(scope="module")
def ddpm() -> DDPMSchedule:
    return DDPMSchedule.create()


def _gaussian_eps(ddpm: DDPMSchedule):
    """The exact eps-prediction E[eps | x_t] for Gaussian data (what a perfectly trained network returns)."""

    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        a = ddpm.alphas_cumprod.double()[t].reshape(-1, *([1] * (x.ndim - 1)))
        var = a * STD**2 + 1 - a
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * MU) / var).float()

    return fn


def _ode_solution(ddpm: DDPMSchedule, x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE maps x_T's standardized value onto the data's: x0 = MU + STD * z."""
    a = ddpm.alphas_cumprod.double()[-1]
    z = (x_T.double() - a.sqrt() * MU) / (a * STD**2 + 1 - a).sqrt()
    return (MU + STD * z).float()


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_twenty_solver_steps_match_200_ddim_steps_on_the_exact_ode(ddpm: DDPMSchedule, name: str) -> None:
    x_T = _randn(0, *SHAPE)
    exact = _ode_solution(ddpm, x_T)

    def error(sample: torch.Tensor) -> float:
        return (sample - exact).abs().max().item()

    solver = error(sample_solver(_gaussian_eps(ddpm), x_T, name, 20, ddpm).sample)
    ddim20 = error(sample_ddim(_gaussian_eps(ddpm), x_T, DDIMSchedule.from_ddpm(ddpm, 20, eta=0.0)).sample)
    ddim200 = error(sample_ddim(_gaussian_eps(ddpm), x_T, DDIMSchedule.from_ddpm(ddpm, 200, eta=0.0)).sample)
    assert solver < 0.3 * ddim20  # far better than DDIM at equal network calls
    assert solver < 2 * ddim200  # about as close to the exact result as the original's 200 steps


def test_sde_solver_draws_its_noise_from_the_generator(ddpm: DDPMSchedule) -> None:
    x_T = _randn(0, *SHAPE)

    def run(seed: int) -> torch.Tensor:
        return sample_solver(_gaussian_eps(ddpm), x_T, "sde-dpmsolver++", 20, ddpm,
                             generator=torch.Generator().manual_seed(seed)).sample

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # stochastic, but still a sample of the data distribution: mean and spread of the Gaussian data
    big = sample_solver(_gaussian_eps(ddpm), _randn(3, 4096), "sde-dpmsolver++", 20, ddpm,
                        generator=torch.Generator().manual_seed(4)).sample
    assert abs(big.mean().item() - MU) < 0.05 and abs(big.std().item() - STD) < 0.05


@pytest.mark.parametrize("name", ["ddim", "sde-dpmsolver++"])
def test_a_batch_with_one_generator_per_row_equals_rows_sampled_alone(ddpm: DDPMSchedule, name: str) -> None:
    x_T, known = _randn(0, *SHAPE), _randn(1, *SHAPE)
    mask = (_randn(2, SHAPE[0], 1, *SHAPE[2:]) > 0).float()
    model = _gaussian_eps(ddpm)

    def run(rows: slice, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        if name == "ddim":
            return sample_masked_ddim(model, x_T[rows], known[rows], mask[rows], DDIMSchedule.from_ddpm(ddpm, 10, 1.0),
                                      generator=gens).sample
        return sample_masked_solver(model, x_T[rows], known[rows], mask[rows], name, 10, ddpm, generator=gens).sample

    batched = run(slice(0, 3), [10, 11, 12])
    for i, seed in enumerate([10, 11, 12]):
        alone = run(slice(i, i + 1), [seed])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-6)


def test_masked_solver_keeps_the_known_latent_outside_the_mask(ddpm: DDPMSchedule) -> None:
    x_T, known = _randn(0, *SHAPE), _randn(1, *SHAPE)
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[..., 1:3, 1:3, 1:3] = 1
    out = sample_masked_solver(_gaussian_eps(ddpm), x_T, known, mask, "dpmsolver++", 8, ddpm).sample
    assert out.shape == (SHAPE[0], SHAPE[1] + 1, *SHAPE[2:])
    assert torch.equal(out[:, -1:], mask)
    outside = (mask == 0).expand(-1, SHAPE[1], -1, -1, -1)
    assert torch.equal(out[:, :-1][outside], known[outside])
    assert not torch.allclose(out[:, :-1][~outside], known[~outside])


def test_each_call_builds_a_fresh_scheduler(ddpm: DDPMSchedule) -> None:
    x_T = _randn(0, *SHAPE)
    steps: list[int] = []
    a = sample_solver(_gaussian_eps(ddpm), x_T, "dpmsolver++", 6, ddpm, callback=lambda i, t, x, x0: steps.append(t))
    b = sample_solver(_gaussian_eps(ddpm), x_T, "dpmsolver++", 6, ddpm)
    assert torch.equal(a.sample, b.sample)  # no multistep history carried over from the first call
    assert steps == a.timesteps and len(steps) == 6 and steps[0] == 999 and steps == sorted(steps, reverse=True)


def test_batch_randn_rows_and_errors() -> None:
    one = batch_randn((1, 2, 3), torch.Generator().manual_seed(5))
    listed = batch_randn((1, 2, 3), [torch.Generator().manual_seed(5)])
    assert torch.equal(one, listed)
    rows = batch_randn((2, 2, 3), [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    assert torch.equal(rows[:1], one) and not torch.equal(rows[1:], one)
    with pytest.raises(ValueError, match="one per batch row"):
        batch_randn((3, 2), [torch.Generator()])


def test_unknown_sampler_and_bad_steps_are_config_errors(ddpm: DDPMSchedule) -> None:
    with pytest.raises(ConfigError, match="valid: ddim, dpmsolver"):
        check_sampler("euler")
    with pytest.raises(ConfigError, match="steps"):
        sample_solver(_gaussian_eps(ddpm), _randn(0, 1, 2), "unipc", 0, ddpm)
