"""Few-step samplers beside the original DDIM: DPM-Solver++ and UniPC through diffusers' schedulers.

The released networks predict eps on the released 1000-step linear schedule; DPM-Solver++(2M) (Lu et al. 2022)
and UniPC (Zhao et al. 2023) are training-free solvers of the same probability-flow ODE that reach DDIM-200 quality
in 10-25 network calls. diffusers implements them (well tested, with the lower-order final steps that keep
them stable below 15 steps), so we configure its schedulers with our float64-derived betas instead of writing
the multistep algebra ourselves. Their ``step`` keeps a history and a step counter, so each sampling call
builds a fresh scheduler and nothing leaks between calls; all arithmetic is elementwise per batch row, so a
batch of lesions gives the rows' results of one-at-a-time sampling.

The masked variant keeps the clean known latent outside the mask before every network call and after the last
step, as the original InpaintingSampler does for DDIM (``samplers.sample_masked_ddim``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ld_augment.diffusion.samplers import Generators, ModelFn, SamplerOutput, StepCallback, batch_randn, paste_known
from ld_augment.diffusion.schedules import DDPMSchedule
from ld_augment.errors import ConfigError, MissingDependencyError

#: name -> (diffusers scheduler class, its options). "sde-dpmsolver++" is the stochastic variant (eta-like noise).
#: Karras sigmas (Karras et al. 2022, eq. 5) put the steps where the ODE bends: on the exact ODE of Gaussian data
#: (tests/diffusion/test_solvers.py) 20 evenly spaced DPM-Solver++ steps are no better than 20 DDIM steps, while
#: 20 Karras-spaced ones are within the error of 200 DDIM steps.
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmsolver++": ("DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}),
}
#: Every sampler an engine can select; "ddim" is the original (``samplers.sample_ddim``).
SAMPLERS = ("ddim", *SOLVERS)


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return name


def make_scheduler(name: str, num_steps: int, ddpm: DDPMSchedule, device: torch.device | str | None = None):
    """A fresh diffusers scheduler for ``name`` on the released betas, with ``num_steps`` timesteps set."""
    check_sampler(name)
    if name == "ddim":
        raise ConfigError("'ddim' is the original sampler: use ld_augment.diffusion.sample_ddim")
    if int(num_steps) < 1 or int(num_steps) > ddpm.num_timesteps:
        raise ConfigError(f"{name} needs 1..{ddpm.num_timesteps} steps, got {num_steps}")
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - diffusers is an install requirement
        raise MissingDependencyError(f"the {name} sampler needs diffusers: pip install diffusers") from exc
    cls_name, options = SOLVERS[name]
    scheduler = getattr(diffusers, cls_name)(
        num_train_timesteps=ddpm.num_timesteps, trained_betas=ddpm.betas.double().numpy(),
        prediction_type="epsilon", timestep_spacing="linspace", **options,
    )
    scheduler.set_timesteps(int(num_steps), device=device)
    return scheduler


def _run_solver(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    name: str,
    num_steps: int,
    ddpm: DDPMSchedule,
    *,
    before_step: Callable[[torch.Tensor], torch.Tensor] | None,
    generator: Generators,
    callback: StepCallback | None,
) -> SamplerOutput:
    scheduler = make_scheduler(name, num_steps, ddpm, x_T.device)
    stochastic = name.startswith("sde-")
    x = x_T.float()  # the solver's arithmetic stays float32 whatever precision the network runs in
    out = SamplerOutput(sample=x_T, timesteps=[])
    for step_number, t in enumerate(scheduler.timesteps):
        if before_step is not None:
            x = before_step(x)
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        noise = batch_randn(x.shape, generator, device=x.device) if stochastic else None
        eps = eps_fn(x, t_batch).float()
        abar = ddpm.alphas_cumprod[int(t)].to(x.device)
        pred_x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()  # for the callback only (DDPM eq. 15)
        extra = {} if noise is None else {"variance_noise": noise}
        x = scheduler.step(eps, t, x, **extra).prev_sample
        out.timesteps.append(int(t))
        if callback is not None:
            callback(step_number, int(t), x, pred_x0)
    out.sample = x
    return out


def sample_solver(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    name: str,
    num_steps: int,
    ddpm: DDPMSchedule,
    *,
    context: torch.Tensor | None = None,
    concat: torch.Tensor | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> SamplerOutput:
    """``sample_ddim`` with a few-step solver: LMNet's inputs ``cat([x_t, concat])`` and ``context``."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x if concat is None else torch.cat([x, concat], dim=1), t, context)

    return _run_solver(eps_fn, x_T, name, num_steps, ddpm, before_step=None, generator=generator, callback=callback)


def sample_masked_solver(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    name: str,
    num_steps: int,
    ddpm: DDPMSchedule,
    *,
    context: torch.Tensor | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> SamplerOutput:
    """``sample_masked_ddim`` with a few-step solver; ``sample`` is ``cat([x, mask])`` with ``known`` kept outside."""
    if known.shape != x_T.shape:
        raise ValueError(f"known latent shape {tuple(known.shape)} != x_T shape {tuple(x_T.shape)}")
    if mask.ndim != x_T.ndim or mask.shape[1] != 1 or mask.shape[2:] != x_T.shape[2:]:
        raise ValueError(f"mask must be [B, 1, *spatial of x_T]; got {tuple(mask.shape)} for x_T {tuple(x_T.shape)}")
    mask = mask.to(torch.float32)
    channels = x_T.shape[1]

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(torch.cat([x, mask], dim=1), t, context)[:, :channels]

    out = _run_solver(eps_fn, x_T, name, num_steps, ddpm, before_step=lambda x: paste_known(x, known, mask),
                      generator=generator, callback=callback)
    out.sample = torch.cat([paste_known(out.sample, known, mask), mask], dim=1)
    return out
