"""Seconds per lesion of the diffusion engines (LMNet mask, LINet + VQ texture), with the procedural baseline.

Networks get random weights from the size presets (the cost does not depend on the weight values); the text
context comes from the offline vocabulary encoder at the UNet's context width (BiomedCLIP gives the same
[1, n, 512] tensor, cached per phrase, so it changes nothing per step). Each engine call is timed after one
warm-up call; the table shows the median over ``--repeats``, the seconds per DDIM step, the extrapolation to the
released 200 steps, and the ratio to the procedural engine measured in the same run on the same lesion.

    python benchmarks/bench_diffusion_engine.py                      # tiny networks, CPU, 10 steps
    python benchmarks/bench_diffusion_engine.py --released --steps 1 # released sizes (CPU: ~minutes per step)
    python benchmarks/bench_diffusion_engine.py --released --steps 20 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from _device import device_name

from ld_augment.engines import LesionContext, create_mask_engine, create_texture_engine
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import LesionReport

LIVER = 5
RELEASED_STEPS = 200
SIZES = {  # volume, lesion box, mask crop, texture crop, presets
    "tiny": ((64, 64, 64), 12, (16, 24, 24), (32, 32, 32), ("lmnet_tiny", "linet_tiny", "vq_tiny")),
    "released": ((160, 192, 192), 20, (64, 152, 152), (128, 128, 128), ("lmnet", "linet", "vq")),
}


def make_context(shape: tuple[int, int, int]) -> LesionContext:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n / 2 for n in shape]
    organ = sum(((g - c) / (0.4 * n)) ** 2 for g, c, n in zip(grid, centre, shape)) <= 1.0
    rng = np.random.default_rng(0)
    ct = (np.where(organ, 55.0, -80.0) + 20.0 * rng.standard_normal(shape)).astype(np.float32)
    return LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * LIVER, organ_mask=organ, organ_name="liver",
                         spacing=(1.0, 1.0, 1.0), occupied=np.zeros(shape, bool))


def timed(fn, repeats: int, device: str, warmup: bool = True) -> tuple[float, object]:
    """Median seconds of ``fn(seed)`` over ``repeats`` calls (after one warm-up call); (seconds, last result)."""
    result = fn(0) if warmup else None
    times = []
    for seed in range(1, repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn(seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def forward_seconds(unet: torch.nn.Module, channels: int, spatial: tuple[int, ...], context_dim: int | None,
                    device: str, precision: str) -> float:
    """One UNet call at the engine's input size: the cost of one DDIM step."""
    from ld_augment.nets import autocast_context

    x = torch.randn(1, channels, *spatial, device=device)
    context = None if context_dim is None else torch.randn(1, 4, context_dim, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)

    def call(_: int) -> None:
        with torch.inference_mode(), autocast_context(device, precision):
            unet(x, t, context=context)

    return timed(call, 1, device, warmup=device != "cpu")[0]


def peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", action="store_true", help="released network sizes and crops")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 10 tiny, 1 released)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", choices=["mask", "texture"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "released" if args.released else "tiny"
    shape, box_size, mask_crop, tex_crop, (lm, li, vq) = SIZES[size]
    steps = args.steps or (1 if args.released else 10)
    warmup = not (args.released and args.device == "cpu")  # a released-size call on CPU is minutes: no warm-up
    ctx = make_context(shape)
    box = BBox(tuple(n // 2 for n in shape), (box_size,) * 3)
    report = LesionReport(organ_id=LIVER).with_values(shape="round-like", density="hypodense lesion",
                                                      size=(box_size,) * 3)
    common = {"steps": steps, "device": args.device, "precision": args.precision, "encoder": "vocab"}
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; {size} networks (random weights), "
          f"{steps} DDIM steps, {args.precision}")
    print(f"volume {shape}, lesion box {box_size}^3, mask crop {mask_crop}, texture crop {tex_crop}")

    proc_mask = create_mask_engine("procedural")
    proc_tex = create_texture_engine("procedural")
    t_pm, proc_lesion = timed(lambda s: proc_mask.generate_mask(ctx, box, report, np.random.default_rng(s)), 3, "cpu")
    t_pt, _ = timed(lambda s: proc_tex.render(ctx, proc_lesion, report, np.random.default_rng(s)), 3, "cpu")

    rows = []
    if args.only in (None, "mask"):
        # min_voxels=1: random weights draw arbitrary masks; the benchmark times the work, not the shape
        engine = create_mask_engine("diffusion", config=lm, crop=mask_crop, min_voxels=1, **common)
        t, lesion = timed(lambda s: engine.generate_mask(ctx, box, report, np.random.default_rng(s)),
                          args.repeats, args.device, warmup)
        step = forward_seconds(engine.net.module, 4, mask_crop, engine.net.cfg.context_dim, args.device,
                               args.precision)
        rows.append(("mask (LMNet)", t, step, t_pm, int(np.sum(lesion))))
    if args.only in (None, "texture"):
        engine = create_texture_engine("diffusion", config=li, vq_config=vq, crop=tex_crop, **common)
        t, _ = timed(lambda s: engine.render(ctx, proc_lesion, report, np.random.default_rng(s)), args.repeats,
                     args.device, warmup)
        latent = tuple(c // engine.factor for c in tex_crop)
        step = forward_seconds(engine.net.module, 5, latent, None, args.device, args.precision)
        rows.append(("texture (LINet+VQ)", t, step, t_pt, int(np.sum(proc_lesion))))

    # s/lesion = once-per-lesion work (crops, VQ encode/decode, threshold search) + steps x s/step; the
    # 200-step column extrapolates with the separately measured forward time (a retry doubles the mask's).
    print(f"{'engine':<20} {'s/lesion':>9} {'s/step':>8} {'once s':>8} {f'@{RELEASED_STEPS} steps s':>13} "
          f"{'procedural s':>12} {'ratio':>8} {'voxels':>7}")
    for name, t, step, base, voxels in rows:
        once = max(t - steps * step, 0.0)
        print(f"{name:<20} {t:>9.3f} {step:>8.3f} {once:>8.2f} {once + RELEASED_STEPS * step:>13.1f} "
              f"{base:>12.3f} {t / max(base, 1e-9):>8.1f} {voxels:>7}")
    print(peak_memory(args.device))


if __name__ == "__main__":
    main()
