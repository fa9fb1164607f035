"""bf16 against the released precision on the tiny reference networks (reference/tiny), CPU or CUDA.

The original ran the released LMNet in fp32 and the released LINet in fp16 (its test config halves the
module); released-mode inference now defaults to those (``nets.RELEASED_PRECISION``), with bf16 opt-in. This
measures what bf16 changes, against the released precision as the baseline measured in the same run:

* one forward pass of each tiny network on its reference inputs: max |error| relative to the ORIGINAL's
  fp32 output (reference/tiny/*/outputs.pt) for fp32, the released precision and bf16 autocast;
* a short LMNet DDIM run (same noise) in fp32 vs bf16: soft-output max difference and the Dice of the
  masks thresholded at 0.5 -- what a threshold search downstream sees;
* a LINet+VQ inpainting run in the released fp16 vs bf16 vs fp32: max |HU| difference inside the lesion.

Usage: python benchmarks/bench_precision.py [--device cpu|cuda] [--steps 20] [--repeats 3] 2>/dev/null
(stderr: progress bars). Needs reference/tiny (LD_REFERENCE_DATA, default ../shared/reference).
The tiny networks carry random weights, so a sampling chain amplifies any rounding difference more than
trained weights would; read 2) and 3) as how far precision alone moves a run, not as image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ld_augment.engines.diffusion.intensity import HU_KNOTS, NORM_KNOTS
from ld_augment.engines.diffusion.sampling import inpaint_linet, sample_lmnet
from ld_augment.nets import UNet3D, UNetConfig, VQConfig, VQModel3D, autocast_context
from ld_augment.nets.precision import RELEASED_PRECISION


def _reference() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
    root = Path(os.environ.get("LD_REFERENCE_DATA", default))
    if not (root / "tiny").is_dir():
        raise SystemExit(f"reference/tiny not found under {root} (set LD_REFERENCE_DATA)")
    return root / "tiny"


def _load(root: Path, name: str, device: torch.device):
    cfg = json.loads((root / name / "config.json").read_text())["constructor_kwargs"]
    model = (VQModel3D(VQConfig.from_original_kwargs(cfg)) if name == "vq"
             else UNet3D(UNetConfig.from_original_kwargs(cfg)))
    model.load_state_dict(torch.load(root / name / "state_dict.pt", weights_only=True), strict=True)
    inputs = torch.load(root / name / "inputs.pt", weights_only=True)
    outputs = torch.load(root / name / "outputs.pt", weights_only=True)
    return model.eval().to(device), inputs, outputs


def _forward(model, name: str, inputs: dict, precision: str, device: torch.device) -> torch.Tensor:
    with torch.no_grad(), autocast_context(device, precision):
        if name == "vq":
            return model(inputs["x"].to(device))[0].float()
        return model(inputs["x"].to(device), inputs["timesteps"].to(device), inputs["context"].to(device)).float()


def _timed(fn, repeats: int) -> tuple[torch.Tensor, float]:
    out = fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - t0) / repeats


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps of the sampling comparisons")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    root = _reference()
    released = {"lmnet_unet": RELEASED_PRECISION["lmnet"], "linet_unet": RELEASED_PRECISION["linet"], "vq": "fp32"}

    print(f"device {device}, torch {torch.__version__}, {args.threads} thread(s)")
    print("\n1) one forward pass on the reference inputs; error vs the ORIGINAL's fp32 output")
    print(f"{'network':12s} {'precision':22s} {'max|err|':>10s} {'rel':>9s} {'ms':>8s}")
    models = {}
    for name in ("lmnet_unet", "linet_unet", "vq"):
        model, inputs, outputs = _load(root, name, device)
        models[name] = model
        ref = outputs["out"] if "out" in outputs else outputs["reconstruction"]
        scale = float(ref.abs().max())
        for label, precision in (("fp32", "fp32"), (f"released ({released[name]})", released[name]),
                                 ("bf16", "bf16")):
            out, secs = _timed(lambda: _forward(model, name, inputs, precision, device), args.repeats)
            err = float((out.cpu() - ref).abs().max())
            print(f"{name:12s} {label:22s} {err:10.2e} {err / scale:9.2e} {secs * 1e3:8.1f}")

    print(f"\n2) LMNet DDIM, {args.steps} steps, eta 1.0, same noise: bf16 against the released fp32")
    gen = torch.Generator().manual_seed(0)
    cond = torch.rand((2, 3, 12, 16, 24), generator=gen)
    cond[:, 2] = 0
    cond[:, 2, 3:9, 4:12, 6:18] = 1  # a box channel
    context = torch.randn((2, 3, 64), generator=gen)
    soft = {}
    for precision in ("fp32", "bf16"):
        g = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
        t0 = time.perf_counter()
        soft[precision] = sample_lmnet(models["lmnet_unet"], cond.to(device), context.to(device), steps=args.steps,
                                       eta=1.0, generator=g, precision=precision).cpu()
        print(f"  {precision}: {time.perf_counter() - t0:.2f} s")
    diff = float((soft["bf16"] - soft["fp32"]).abs().max())
    dice = _dice(soft["bf16"].numpy() > 0.5, soft["fp32"].numpy() > 0.5)
    print(f"  soft output max |bf16 - fp32| = {diff:.3e}; Dice of the > 0.5 masks = {dice:.4f}")

    print(f"\n3) LINet + VQ inpainting, {args.steps} steps, same noise: bf16 and fp32 against the released fp16")
    image = torch.rand((1, 1, 16, 24, 32), generator=gen) * 0.4 + 0.3
    mask = torch.zeros((1, 1, 8, 12, 16))
    mask[..., 2:6, 3:9, 4:12] = 1
    out = {}
    for precision in ("fp16", "bf16", "fp32"):
        g = [torch.Generator(device=device).manual_seed(3)]
        try:
            out[precision] = inpaint_linet(models["linet_unet"], models["vq"], image.to(device), mask.to(device), None,
                                           steps=args.steps, eta=1.0, generator=g, precision=precision).cpu()
        except RuntimeError as exc:  # fp16 autocast may be missing on an old CPU build
            print(f"  {precision}: not available on {device} ({str(exc).splitlines()[0]})")
    up = torch.nn.functional.interpolate(mask, size=image.shape[2:], mode="nearest") > 0.5
    hu_per_unit = (HU_KNOTS[2] - HU_KNOTS[1]) / (NORM_KNOTS[2] - NORM_KNOTS[1])  # soft-tissue window slope
    base = "fp16" if "fp16" in out else "fp32"
    for precision in ("bf16", "fp32"):
        if precision in out and precision != base:
            d = (out[precision] - out[base]).abs()
            print(f"  {precision} vs released {base}: max |diff| inside the lesion = {float(d[up].max()):.3e} "
                  f"(~{float(d[up].max()) * hu_per_unit:.1f} HU in the soft-tissue window), "
                  f"mean {float(d[up].mean()) * hu_per_unit:.2f} HU")


if __name__ == "__main__":
    main()
