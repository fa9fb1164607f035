"""Periodic PNG samples of a run: what the network draws on one fixed validation crop, as training goes.

LMNet: a short DDIM mask over the organ and its box; LINet: the crop beside its inpainted version; VQ: the crop
beside its reconstruction. Axial and coronal mid-slices, found from the crops' array layout. Short samplers
(SAMPLE_STEPS DDIM steps) keep a sample to seconds; they show trends, not final quality.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ld_augment.diffusion import DDPMSchedule
from ld_augment.engines.diffusion.sampling import inpaint_linet, sample_lmnet
from ld_augment.nets import VQModel3D
from ld_augment.text import AttributeEncoder

SAMPLE_INDEX = 2**61  # the fixed validation crop: a sample index no training step reaches
SAMPLE_STEPS = 10
SampleFn = Callable[[torch.nn.Module, int], Any]


def view_axes(dataset: Any) -> tuple[int, int]:
    """(axial, coronal) array axes of the dataset's crops: where S/I and A/P lie in its layout codes."""
    codes = str(getattr(getattr(dataset, "layout", None), "codes", "RAS")).upper()
    find = lambda pair: next((i for i, c in enumerate(codes) if c in pair), 0)  # noqa: E731
    return find("SI"), find("AP")


def _figure(panels: list[tuple[str, np.ndarray, np.ndarray | None]], title: str, axes_: tuple[int, int] = (2, 1)
            ) -> Any:
    """Rows: the axial and coronal mid-slices; columns: the panels (image, optional contour overlay)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(3 * len(panels), 6), squeeze=False)
    for col, (name, vol, overlay) in enumerate(panels):
        for row, axis in enumerate(axes_):
            mid = vol.shape[axis] // 2
            ax = axes[row][col]
            ax.imshow(np.take(vol, mid, axis=axis).T, cmap="gray", origin="lower", vmin=0, vmax=1)
            if overlay is not None and np.take(overlay, mid, axis=axis).any():
                ax.contour(np.take(overlay, mid, axis=axis).T, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{name} ({'axial' if row == 0 else 'coronal'})", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def _context(encoder: AttributeEncoder | None, texts: list[str], device: torch.device) -> torch.Tensor | None:
    return None if encoder is None else encoder.encode_attributes([texts]).to(device)


def lmnet_sample_fn(dataset: Any, encoder: AttributeEncoder | None, schedule: DDPMSchedule,
                    device: torch.device) -> SampleFn:
    """The organ (gray), its box and the sampled mask (red contour) of the fixed crop."""
    item = dataset[SAMPLE_INDEX]

    def draw(module: torch.nn.Module, step: int) -> Any:
        cond = item["cond"][None].to(device)
        gen = torch.Generator(device=device).manual_seed(0)
        mask = sample_lmnet(module, cond, _context(encoder, item["texts"], device), steps=SAMPLE_STEPS, eta=0.0,
                            generator=gen)[0, 0].clamp(0, 1).cpu().numpy()
        organ, box = item["cond"][1].numpy(), item["cond"][2].numpy()
        truth = item["x0"][0].numpy()
        return _figure([("organ + sampled mask", 0.3 * organ + 0.3 * box, mask > 0.5),
                        ("organ + training mask", 0.3 * organ + 0.3 * box, truth > 0.5)],
                       f"LMNet step {step}: {item['case_id']}", view_axes(dataset))

    return draw


def linet_sample_fn(dataset: Any, vq: VQModel3D, encoder: AttributeEncoder | None, device: torch.device
                    ) -> SampleFn:
    """The fixed crop beside the lesion region inpainted by the network (red: the lesion mask)."""
    item = dataset[SAMPLE_INDEX]

    def draw(module: torch.nn.Module, step: int) -> Any:
        image = item["image"][None].to(device)
        with torch.no_grad():
            latent_shape = vq.encode(image).shape[2:]
        mask = (F.interpolate(item["lesion"][None].to(device), size=latent_shape, mode="nearest") > 0.5).float()
        gen = torch.Generator(device=device).manual_seed(0)
        out = inpaint_linet(module, vq, image, mask, _context(encoder, item["texts"], device), steps=SAMPLE_STEPS,
                            eta=0.0, generator=gen)[0, 0].clamp(0, 1).cpu().numpy()
        lesion = item["lesion"][0].numpy() > 0.5
        return _figure([("input", item["image"][0].numpy(), lesion), ("inpainted", out, lesion)],
                       f"LINet step {step}: {item['case_id']}", view_axes(dataset))

    return draw


def vq_sample_fn(dataset: Any, device: torch.device) -> SampleFn:
    """The fixed crop beside its reconstruction."""
    item = dataset[SAMPLE_INDEX]

    def draw(module: torch.nn.Module, step: int) -> Any:
        recon, _ = module(item["image"][None].to(device))
        out = recon[0, 0].float().clamp(0, 1).cpu().numpy()
        return _figure([("input", item["image"][0].numpy(), None), ("reconstruction", out, None)],
                       f"VQ step {step}: {item['case_id']}", view_axes(dataset))

    return draw
