"""Stage: diffusion (see DEVELOPERS.md). DDPM schedule, DDIM + masked DDIM samplers, few-step solvers (DPM-Solver++, UniPC), training noising.

Never imports ``nets``: samplers take any ``model_fn(x, t_batch, context) -> eps``.
"""

from ld_augment.diffusion.noising import LINetLoss, linet_loss, lmnet_loss, masked_q_sample, q_sample, soft_dice_loss
from ld_augment.diffusion.samplers import (
    SamplerOutput,
    StepOutput,
    batch_randn,
    ddim_step,
    paste_known,
    sample_ddim,
    sample_masked_ddim,
)
from ld_augment.diffusion.solvers import SAMPLERS, SOLVERS, check_sampler, sample_masked_solver, sample_solver
from ld_augment.diffusion.schedules import DDIMSchedule, DDPMSchedule, ddim_timesteps, make_beta_schedule

__all__ = [
    "SAMPLERS", "SOLVERS", "batch_randn", "check_sampler", "sample_masked_solver", "sample_solver",
    "DDIMSchedule", "DDPMSchedule", "LINetLoss", "SamplerOutput", "StepOutput", "ddim_step", "ddim_timesteps",
    "linet_loss", "lmnet_loss", "make_beta_schedule", "masked_q_sample", "paste_known", "q_sample",
    "sample_ddim", "sample_masked_ddim", "soft_dice_loss",
]  # fmt: skip
