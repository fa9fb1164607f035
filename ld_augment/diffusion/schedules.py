"""DDPM noise schedule and the DDIM sub-schedules of LesionDiffusion, as plain tensors.

Numerics follow the original exactly (checked against ``reference/schedules``): betas are computed in float64,
every derived DDPM buffer is computed in float64 and stored as float32; DDIM reads the float32 ``alphas_cumprod``.
DDIM's "uniform" timesteps are ``range(0, T, T // S) + 1`` with ``alphas_prev[0] = alphas_cumprod[0]``.

Why not diffusers' ``DDIMScheduler``: with ``timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False``
it visits the same timesteps with the same ``alphas_prev``, but it always rebuilds ``alphas_cumprod`` as a float32
cumprod of float32 betas (even from ``trained_betas``), so its coefficients drift from the original's
float64-derived buffers by float32 accumulation error (the stored goldens would not match exactly), its ``step``
keeps a step counter set by ``set_timesteps``, and it would add a dependency for ~20 lines of formulas.
Written small instead (Song et al. 2021, "Denoising Diffusion Implicit Models").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ld_augment.errors import ConfigError

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
DDIM_DISCRETIZATIONS = ("uniform",)


def make_beta_schedule(
    schedule: str = "linear",
    timesteps: int = 1000,
    linear_start: float = 0.0015,
    linear_end: float = 0.0195,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """Betas (float64, shape [timesteps]).

    "linear" is the LDM convention LesionDiffusion uses: linear in sqrt(beta), i.e. ``linspace(sqrt(start),
    sqrt(end), T) ** 2`` -- not linear in beta. "cosine" is Nichol & Dhariwal (2021), eq. 17, clipped at 0.999.
    """
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
        f = torch.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        f = f / f[0]
        return (1 - f[1:] / f[:-1]).clamp(min=0, max=0.999)
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
    raise ConfigError(f"unknown beta schedule {schedule!r}; valid choices: {', '.join(BETA_SCHEDULES)}")


@dataclass(frozen=True)
class DDPMSchedule:
    """Every buffer the original registers (float32, shape [T]); index t is DDPM step t (0-based).

    ``posterior_*`` describe q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7); ``lvlb_weights`` are the
    eps-parameterisation VLB weights, with entry 0 (infinite: posterior variance 0) replaced by entry 1.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    lvlb_weights: torch.Tensor

    BUFFERS = (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "lvlb_weights",
    )  # fmt: skip

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> DDPMSchedule:
        """All buffers from float64 betas (computed in float64, stored float32, as the original does)."""
        b = betas.to(torch.float64)
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ConfigError("betas must be a 1-D tensor with values in (0, 1]")
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        f32 = {
            "betas": b,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
            "posterior_mean_coef1": b * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        }
        f32 = {k: v.to(torch.float32) for k, v in f32.items()}
        # The original computes the VLB weights in torch from the already-float32 buffers.
        lvlb = f32["betas"] ** 2 / (
            2 * f32["posterior_variance"] * alphas.to(torch.float32) * (1 - f32["alphas_cumprod"])
        )
        if lvlb.numel() > 1:
            lvlb[0] = lvlb[1]
        return cls(**f32, lvlb_weights=lvlb)

    @classmethod
    def create(
        cls,
        schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 0.0015,
        linear_end: float = 0.0195,
    ) -> DDPMSchedule:
        """The schedule of a config's ``beta_schedule/timesteps/linear_start/linear_end`` (released defaults)."""
        return cls.from_betas(make_beta_schedule(schedule, timesteps, linear_start, linear_end))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.BUFFERS}


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, discretization: str = "uniform") -> torch.Tensor:
    """DDPM indices visited by DDIM, ascending (int64): ``range(0, T, T // S) + 1``, as the original.

    Two consequences of that rule, kept for fidelity and checked here instead of crashing later: the number of
    steps actually taken is ``ceil(T / (T // S))``, which equals S only when S divides T (S=400 takes 500 steps);
    and a stride whose last entry lands on t=T (every S > T/2, or e.g. S=300 for T=1000) is out of range, so it
    is a ConfigError. Divisors of T (10, 50, 200, 500 for T=1000) are always valid.
    """
    if discretization not in DDIM_DISCRETIZATIONS:
        raise ConfigError(f"unknown DDIM discretization {discretization!r}; valid: {', '.join(DDIM_DISCRETIZATIONS)}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = num_train_timesteps // num_steps
    steps = torch.arange(0, num_train_timesteps, stride, dtype=torch.int64) + 1
    if int(steps[-1]) >= num_train_timesteps:
        raise ConfigError(
            f"num_steps={num_steps} (stride {stride}) with the uniform '+1' offset visits t={int(steps[-1])}, outside "
            f"the {num_train_timesteps}-step schedule; use a divisor of {num_train_timesteps} up to "
            f"{num_train_timesteps // 2} (e.g. 10, 50, 200)"
        )
    return steps


@dataclass(frozen=True)
class DDIMSchedule:
    """The per-step DDIM coefficients, indexed by the step index i (0 = least noisy, visited last).

    dtypes mirror the original: alphas and sqrt_one_minus_alphas float32, alphas_prev and sigmas float64.
    sigma_i = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))  (DDIM paper, eq. 16).
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor
    alphas_prev: torch.Tensor
    sigmas: torch.Tensor
    sqrt_one_minus_alphas: torch.Tensor
    eta: float
    num_train_timesteps: int

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @classmethod
    def from_ddpm(cls, ddpm: DDPMSchedule, num_steps: int, eta: float = 0.0) -> DDIMSchedule:
        """The original's DDIM sub-schedule: ``num_steps`` uniform steps, stochasticity ``eta`` (0 = deterministic)."""
        return cls.from_timesteps(ddpm, ddim_timesteps(num_steps, ddpm.num_timesteps), eta)

    @classmethod
    def from_timesteps(cls, ddpm: DDPMSchedule, timesteps: torch.Tensor, eta: float = 0.0) -> DDIMSchedule:
        """Any strictly increasing timesteps in [1, T); the step from ``timesteps[0]`` lands on abar_0.

        ``torch.arange(1, T)`` is the one-DDIM-step-per-DDPM-step path (which the uniform rule cannot produce):
        with eta=1 it is DDPM ancestral sampling (posterior mean + posterior std).
        """
        if eta < 0:
            raise ConfigError(f"DDIM eta must be >= 0, got {eta}")
        ts = torch.as_tensor(timesteps, dtype=torch.int64)
        if ts.ndim != 1 or ts.numel() == 0 or int(ts[0]) < 1 or int(ts[-1]) >= ddpm.num_timesteps:
            raise ConfigError(f"DDIM timesteps must be a non-empty 1-D range inside [1, {ddpm.num_timesteps})")
        if ts.numel() > 1 and not bool((ts.diff() > 0).all()):
            raise ConfigError("DDIM timesteps must be strictly increasing")
        ac = ddpm.alphas_cumprod.to(torch.float32)
        alphas = ac[ts]
        alphas_prev = torch.cat([ac[:1], ac[ts[:-1]]]).to(torch.float64)
        # Bit-exact replica of the original's mixed numpy/torch arithmetic: 1 - a and its reciprocal are
        # float32, the rest float64, and the square roots are numpy's correctly rounded ones (torch's
        # vectorised float64 sqrt differs by 1 ulp on a few entries).
        inv_one_minus_a = (1.0 - alphas).reciprocal().to(torch.float64)
        var_ratio = inv_one_minus_a * (1.0 - alphas_prev) * (1.0 - alphas.to(torch.float64) / alphas_prev)
        sigmas = eta * torch.from_numpy(np.sqrt(var_ratio.numpy()))
        sqrt_one_minus = torch.from_numpy(np.sqrt((1.0 - alphas).to(torch.float64).numpy())).to(torch.float32)
        return cls(
            timesteps=ts,
            alphas=alphas,
            alphas_prev=alphas_prev,
            sigmas=sigmas,
            sqrt_one_minus_alphas=sqrt_one_minus,
            eta=float(eta),
            num_train_timesteps=ddpm.num_timesteps,
        )
