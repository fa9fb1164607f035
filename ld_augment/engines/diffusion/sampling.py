"""Where a network meets a sampler: the LMNet and LINet sampling loops, ~20 lines each (as diffusers' pipeline_ddim).

The caller passes the torch.Generator(s) and device, so a seeded engine call is repeatable and the loops hold
no state. Inputs are batches: several lesions run through the network together, each with its own crop, text
and generator (one generator per batch row), and row i equals what lesion i gives alone with that generator.
Latents stay float32 (the samplers' coefficients reach 1e-4); only the network runs under autocast when
``precision`` asks for bf16/fp16 ("auto": bf16 on CUDA). ``sampler`` is "ddim" (the original, with ``eta``)
or a few-step solver of ``ld_augment.diffusion.SOLVERS`` (``steps`` network calls; ``eta`` unused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ld_augment.diffusion import (
    DDIMSchedule, DDPMSchedule, batch_randn, sample_ddim, sample_masked_ddim, sample_masked_solver, sample_solver,
)
from ld_augment.diffusion.samplers import Generators
from ld_augment.nets import VQModel3D, autocast_context


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch.Generator on ``device`` seeded from the caller's numpy rng (the engines take no global seed)."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(0, 2**63 - 1)))


def ddim_schedule(steps: int, eta: float) -> DDIMSchedule:
    """The released schedule (linear betas 0.0015..0.0195, 1000 steps) sub-sampled to ``steps`` DDIM steps."""
    return DDIMSchedule.from_ddpm(DDPMSchedule.create(), num_steps=int(steps), eta=float(eta))


#: Below this many steps a progress bar is noise (tests, quick previews); above, a lesion takes minutes on CPU.
PROGRESS_MIN_STEPS = 20


@contextmanager
def step_progress(steps: int, desc: str) -> Iterator[Callable[..., None] | None]:
    """A sampler callback that advances a progress bar per DDIM step (None for short runs)."""
    if steps < PROGRESS_MIN_STEPS:
        yield None
        return
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        yield lambda *_: bar.update(1)


def _model_fn(unet: nn.Module, precision: str, device: torch.device):
    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        with autocast_context(device, precision):
            return unet(x, t, context=context).float()

    return fn


@torch.inference_mode()
def sample_lmnet(unet: nn.Module, cond: torch.Tensor, context: torch.Tensor | None, *, steps: int, eta: float,
                 generator: Generators, precision: str = "fp32", sampler: str = "ddim") -> torch.Tensor:
    """LMNet's MaskSampler: x_T ~ N(0, I), DDIM on cat([x_t, cond]) -> soft lesion masks [B, 1, *spatial]."""
    device = cond.device
    x_T = batch_randn((cond.shape[0], 1, *cond.shape[2:]), generator, device=device)
    model = _model_fn(unet, precision, device)
    with step_progress(steps, "LMNet mask") as callback:
        if sampler == "ddim":
            out = sample_ddim(model, x_T, ddim_schedule(steps, eta), context=context, concat=cond,
                              generator=generator, callback=callback)
        else:
            out = sample_solver(model, x_T, sampler, steps, DDPMSchedule.create(), context=context, concat=cond,
                                generator=generator, callback=callback)
    return out.sample


@torch.inference_mode()
def inpaint_linet(unet: nn.Module, vq: VQModel3D, image: torch.Tensor, mask: torch.Tensor,
                  context: torch.Tensor | None, *, steps: int, eta: float, generator: Generators,
                  precision: str = "fp32", sampler: str = "ddim") -> torch.Tensor:
    """LINet's InpaintingSampler between VQ encode and decode: normalised crops [B,1,*S] -> generated crops.

    ``mask`` is the lesion at latent resolution ([B, 1, *S/f], 1 = generate); outside it the clean latent z0
    of the healthy crop is kept at every step, as the original does.
    """
    device = image.device
    with autocast_context(device, precision):
        z0 = vq.encode(image).float()
    x_T = batch_randn(z0.shape, generator, device=device)
    model, mask = _model_fn(unet, precision, device), mask.to(z0.dtype)
    with step_progress(steps, "LINet texture") as callback:
        if sampler == "ddim":
            out = sample_masked_ddim(model, x_T, z0, mask, ddim_schedule(steps, eta), context=context,
                                     generator=generator, callback=callback)
        else:
            out = sample_masked_solver(model, x_T, z0, mask, sampler, steps, DDPMSchedule.create(),
                                       context=context, generator=generator, callback=callback)
    z_q, _, _ = vq.quantize_latent(out.sample[:, : z0.shape[1]])  # nearest codes in float32, never autocast
    with autocast_context(device, precision):
        return vq.decode_quantized(z_q).float()


def to_tensor(arrays: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack same-shaped arrays as channels of a [1, C, *spatial] float32 tensor on ``device``."""
    return torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrays])[None]).to(device)
