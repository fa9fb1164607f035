"""DDIM sampling: one pure step and the two loops LesionDiffusion uses (plain and masked/inpainting).

The network is any callable ``model_fn(x, t_batch, context) -> eps`` so this stage never imports ``nets``;
``engines`` wires a UNet in. Everything here reproduces the original samplers' numbers (see
``tests/engines/test_reference_sampling.py``): coefficients are cast to the sample's dtype exactly as the original's
``torch.full`` does, and the arithmetic runs in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ld_augment.diffusion.schedules import DDIMSchedule

#: One generator for the whole batch, or one per batch row (batched lesions: each keeps its own random stream).
Generators = torch.Generator | Sequence[torch.Generator] | None
ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# callback(step_number, timestep, x_after_step, pred_x0); step_number counts from 0 (noisiest step first).
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class StepOutput:
    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


@dataclass
class SamplerOutput:
    """Final sample; with ``record_intermediates`` also x_T followed by x after every step, and each pred_x0."""

    sample: torch.Tensor
    timesteps: list[int]
    intermediates: list[torch.Tensor] = field(default_factory=list)
    pred_x0: list[torch.Tensor] = field(default_factory=list)


def _coef(values: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Schedule entry as a 0-d tensor of the sample's dtype/device (rounds like the original's torch.full)."""
    return values[index].to(device=like.device, dtype=like.dtype)


def ddim_step(
    model_output: torch.Tensor,
    index: int,
    sample: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    noise: torch.Tensor | None = None,
) -> StepOutput:
    """x_{t_index} -> x_{t_index - 1} from the predicted noise (DDIM, Song et al. 2021, eq. 12).

    pred_x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    x_prev  = sqrt(a_prev) * pred_x0 + sqrt(1 - a_prev - sigma^2) * eps + sigma * noise
    ``index`` is the position in ``schedule`` (0 = least noisy). ``noise`` is required when sigma > 0 (pass
    zeros for the mean). Pure: mutates nothing and keeps no step counter. Computes in at least float32 (an
    fp16 sample or model output gives a float32 result; keep latents float32 and autocast only the network).
    """
    if not 0 <= index < schedule.num_steps:
        raise IndexError(f"DDIM step index {index} outside [0, {schedule.num_steps})")
    if model_output.shape != sample.shape:  # checked before any cast
        raise ValueError(f"model output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
    # 0-d coefficients do not promote a half tensor, so lift the operands themselves (no-op for float32).
    compute_dtype = torch.promote_types(sample.dtype, torch.float32)
    sample, model_output = sample.to(compute_dtype), model_output.to(compute_dtype)
    a_t = _coef(schedule.alphas, index, sample)
    a_prev = _coef(schedule.alphas_prev, index, sample)
    sigma = _coef(schedule.sigmas, index, sample)
    sqrt_one_minus_a_t = _coef(schedule.sqrt_one_minus_alphas, index, sample)

    pred_x0 = (sample - sqrt_one_minus_a_t * model_output) / a_t.sqrt()
    direction = (1.0 - a_prev - sigma**2).sqrt() * model_output
    prev = a_prev.sqrt() * pred_x0 + direction
    if float(schedule.sigmas[index]) != 0.0:
        if noise is None:
            raise ValueError(f"DDIM step {index} has sigma > 0 (eta={schedule.eta}); pass noise (zeros for the mean)")
        prev = prev + sigma * noise
    return StepOutput(prev_sample=prev, pred_x0=pred_x0)


def batch_randn(shape: Sequence[int], generator: Generators, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators row i is drawn from generator i alone.

    So a batch of lesions sampled together gets, row by row, exactly the numbers each lesion would get alone
    with its own generator (a single generator with batch 1 draws the same numbers as a one-element list).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}; pass one per batch row")
    row = (1, *shape[1:])
    return torch.cat([torch.randn(row, generator=g, device=device, dtype=dtype) for g in generators])


def _step_noise(schedule: DDIMSchedule, index: int, x: torch.Tensor, generator: Generators):
    if float(schedule.sigmas[index]) == 0.0:
        return None
    return batch_randn(x.shape, generator, device=x.device, dtype=x.dtype)


def _timestep_batch(schedule: DDIMSchedule, index: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(schedule.timesteps[index]), device=x.device, dtype=torch.long)


def _run_ddim(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    before_step: Callable[[torch.Tensor], torch.Tensor] | None,
    generator: Generators,
    callback: StepCallback | None,
    record_intermediates: bool,
) -> SamplerOutput:
    """The DDIM loop both samplers share: largest timestep first, optional ``before_step`` on x, eq. 12 step."""
    x = x_T
    out = SamplerOutput(sample=x_T, timesteps=[])
    if record_intermediates:
        out.intermediates.append(x_T)
    for step_number, index in enumerate(reversed(range(schedule.num_steps))):
        if before_step is not None:
            x = before_step(x)
        t = _timestep_batch(schedule, index, x)
        result = ddim_step(eps_fn(x, t), index, x, schedule, noise=_step_noise(schedule, index, x, generator))
        x = result.prev_sample
        out.timesteps.append(int(t[0]))
        if record_intermediates:
            out.intermediates.append(x)
            out.pred_x0.append(result.pred_x0)
        if callback is not None:
            callback(step_number, int(t[0]), x, result.pred_x0)
    out.sample = x
    return out


def sample_ddim(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    context: torch.Tensor | None = None,
    concat: torch.Tensor | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
    record_intermediates: bool = False,
) -> SamplerOutput:
    """Plain DDIM from x_T down to t=1's predecessor, as LMNet's MaskSampler.

    Each step feeds ``cat([x_t, concat])`` (``concat`` = LMNet's organ map / organ mask / bbox channels; None for
    no concatenation) and ``context`` (cross-attention text) to ``model_fn``; no masking or blending.
    ``generator`` drives the noise when eta > 0 (a list: one generator per batch row, see ``batch_randn``).
    """
    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x if concat is None else torch.cat([x, concat], dim=1), t, context)

    return _run_ddim(eps_fn, x_T, schedule, before_step=None, generator=generator, callback=callback,
                     record_intermediates=record_intermediates)


def paste_known(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * x + (1 - mask) * known``: generated inside the mask, the CLEAN known latent outside."""
    return mask * x + (1 - mask) * known


def sample_masked_ddim(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    context: torch.Tensor | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
    record_intermediates: bool = False,
) -> SamplerOutput:
    """Inpainting DDIM as LINet's InpaintingSampler; ``sample`` is ``cat([x, mask])`` (C + 1 channels).

    Before every step the region outside ``mask`` (1 = generate, 0 = keep) is replaced by the clean ``known``
    latent -- not a re-noised q_sample(known, t), unlike generic RePaint-style inpainting -- and once more after
    the last step, so known latents come back bit-identical. The model sees ``cat([x, mask])``; only its first
    C output channels (eps) are used, the extra channel (LINet's mask logit) is ignored. ``intermediates`` hold x
    after each step before the next paste, as the original logs them.
    """
    if known.shape != x_T.shape:
        raise ValueError(f"known latent shape {tuple(known.shape)} != x_T shape {tuple(x_T.shape)}")
    if mask.ndim != x_T.ndim or mask.shape[1] != 1 or mask.shape[2:] != x_T.shape[2:]:
        raise ValueError(f"mask must be [B, 1, *spatial of x_T]; got {tuple(mask.shape)} for x_T {tuple(x_T.shape)}")
    mask = mask.to(x_T.dtype)  # a bool mask becomes 0/1 (needed for 1 - mask and the model's extra channel)
    channels = x_T.shape[1]

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(torch.cat([x, mask], dim=1), t, context)[:, :channels]

    out = _run_ddim(eps_fn, x_T, schedule, before_step=lambda x: paste_known(x, known, mask), generator=generator,
                    callback=callback, record_intermediates=record_intermediates)
    out.sample = torch.cat([paste_known(out.sample, known, mask), mask], dim=1)
    return out
