"""How much a few-step sampler changes the result against the original 200-step DDIM, on trained tiny networks.

Trains tiny LMNet, VQ and LINet on generated cases (ellipsoid liver with an ellipsoid lesion, real-looking HU)
with `ld_augment.training` (or reuses `--work`'s checkpoints), then draws each evaluation lesion through the
engines with the same seed: the reference is 200 DDIM steps with eta 0 (the deterministic ODE the solvers
approximate; eta 1 redraws noise every step, so two eta-1 runs differ by design), against DDIM and each
few-step solver at ``--steps`` network calls. Printed per sampler: mask Dice to the 200-step mask (LMNet, after
the engine's threshold search) and the lesion's HU difference (LINet + VQ: mean |HU| difference inside the
lesion, and the difference of the lesion's mean HU), with the seconds per lesion of each, all in this run.

    python benchmarks/bench_sampler_quality.py                      # ~minutes on 2 CPU cores
    python benchmarks/bench_sampler_quality.py --steps 10,20 --work /tmp/q   # keep / reuse the trained networks
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _device import device_name

LIVER = 5
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
SHAPE = (40, 40, 40)
MASK_CROP, TEXTURE_CROP = (16, 24, 24), (16, 16, 16)


def _ellipsoid(centre, radii) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(CT HU, organ seg v1, liver mask, lesion mask) of one generated case."""
    c = np.array(SHAPE) / 2
    liver = _ellipsoid(c + rng.uniform(-2, 2, 3), rng.uniform(11, 14, 3))
    centre = c + rng.uniform(-4, 4, 3)
    lesion = _ellipsoid(centre, rng.uniform(3, 5.5, 3)) & liver
    body = _ellipsoid(c, np.array(SHAPE) * 0.48)
    ct = np.where(body, 0.0, -1000.0) + rng.normal(0, 8, SHAPE)
    ct[liver] = 60 + rng.normal(0, 8, int(liver.sum()))
    ct[lesion] = rng.uniform(-10, 30) + rng.normal(0, 8, int(lesion.sum()))
    ct[_ellipsoid(c + [0, -15, 0], [3, 3, 15])] = 400.0  # a spine, so the HU range looks like a CT's
    seg = liver.astype(np.uint8) * LIVER
    return ct.astype(np.float32), seg, liver, lesion


def _report(lesion: np.ndarray) -> dict:
    lo, hi = np.argwhere(lesion).min(0), np.argwhere(lesion).max(0) + 1
    centre, size = ((lo + hi) // 2).tolist(), (hi - lo).tolist()
    return {str(LIVER): ["round-like,", "", {
        "enhancement status": "enhanced CT,", "lesion location": str(LIVER), "shape": "round-like,",
        "size": f"[[{size[0]} {size[1]} {size[2]}]] pixel", "density": "low density lesion,",
        "density variations": "homogeneous,", "CT value": "Mean density of the lesion region is approximately 20 HU,",
        "surface characteristics": "well-defined margin,",
        "relationship with adjacent organs": "no close relationship with surrounding organs,",
        "specific features": ""}, [[centre], [size]]]}


def write_cases(root: Path, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        ct, seg, liver, lesion = _case(rng)
        folder = root / f"case_{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        label = liver.astype(np.float32)
        label[lesion] = 2
        for name, data in (("label", label), ("totalseg", seg), ("ct", ct.astype(np.int16))):
            nib.save(nib.Nifti1Image(data, AFFINE), str(folder / f"{name}.nii.gz"))
        (folder / "report.json").write_text(json.dumps(_report(lesion)))
        cases.append((ct, seg, liver, lesion))
    return cases


def train(work: Path, data: Path, steps: int) -> dict[str, Path]:
    from ld_augment.training import train_linet, train_lmnet, train_vq

    common = {"config": "tiny", "lr": 1e-3, "ema_decay": 0.99, "progress": True, "save_every": 10**6}
    out = {"lmnet": work / "lmnet" / "lmnet.pt", "vq": work / "vq" / "vq.pt", "linet": work / "linet" / "linet.pt"}
    if not out["lmnet"].is_file():
        train_lmnet(data, work / "lmnet", steps=steps, crop_size=MASK_CROP, batch_size=2, **common)
    if not out["vq"].is_file():
        train_vq(data, work / "vq", steps=steps // 2, crop_size=TEXTURE_CROP, batch_size=2,
                 **{**common, "ema_decay": None})
    if not out["linet"].is_file():
        train_linet(data, work / "linet", vq=out["vq"], steps=steps, crop_size=TEXTURE_CROP, batch_size=2, **common)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="folder for cases and checkpoints (reused when present)")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--cases", type=int, default=8, help="generated training cases")
    parser.add_argument("--lesions", type=int, default=6, help="evaluation lesions (new generated cases)")
    parser.add_argument("--steps", default="10,20", help="comma list of network calls for the few-step samplers")
    parser.add_argument("--samplers", default="ddim,dpmsolver++,unipc")
    args = parser.parse_args(argv)

    from ld_augment.engines import LesionContext, create_mask_engine, create_texture_engine
    from ld_augment.placement.bboxes import BBox
    from ld_augment.reports import LesionReport

    work = Path(args.work or tempfile.mkdtemp(prefix="ld_quality_"))
    data = work / "data"
    if not data.is_dir():
        write_cases(data, args.cases, seed=0)
    t0 = time.perf_counter()
    ckpt = train(work, data, args.train_steps)
    print(f"device: {device_name('cpu')}; tiny networks trained {args.train_steps} steps on {args.cases} generated "
          f"cases ({time.perf_counter() - t0:.0f} s; {work})")

    evaluation = []
    for ct, seg, liver, lesion in write_cases(work / "eval", args.lesions, seed=1):
        lo, hi = np.argwhere(lesion).min(0), np.argwhere(lesion).max(0) + 1
        box = BBox(tuple(int(v) for v in (lo + hi) // 2), tuple(int(v) for v in hi - lo))
        report = LesionReport(organ_id=LIVER).with_values(shape="round-like", density="hypodense lesion",
                                                          size=tuple(int(s) for s in hi - lo))
        ctx = LesionContext(ct=ct, organ_seg=seg, organ_mask=liver, organ_name="liver", spacing=(1.0, 1.0, 1.0),
                            occupied=np.zeros(SHAPE, bool))
        evaluation.append((ctx, box, report, lesion))

    def run(sampler: str, steps: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        opts = {"steps": steps, "eta": 0.0, "sampler": sampler, "encoder": "vocab", "device": "cpu"}
        masker = create_mask_engine("diffusion", checkpoint=ckpt["lmnet"], crop=MASK_CROP, min_voxels=1, **opts)
        texturer = create_texture_engine("diffusion", checkpoint=ckpt["linet"], vq_checkpoint=ckpt["vq"],
                                         crop=TEXTURE_CROP, **opts)
        masks, cts = [], []
        t = time.perf_counter()
        for k, (ctx, box, report, lesion) in enumerate(evaluation):
            masks.append(masker.generate_mask(ctx, box, report, np.random.default_rng(100 + k)))
            cts.append(texturer.render(ctx, lesion, report, np.random.default_rng(200 + k)))  # the true lesion
        return masks, cts, (time.perf_counter() - t) / len(evaluation)

    ref_masks, ref_cts, ref_s = run("ddim", 200)
    print(f"reference: DDIM 200 steps, eta 0: {ref_s:.2f} s/lesion; {args.lesions} lesions, same seeds everywhere")
    print(f"{'sampler':<14} {'steps':>5} {'s/lesion':>9} {'speed':>7} {'mask Dice':>10} {'min Dice':>9} "
          f"{'|dHU| lesion':>13} {'d mean HU':>10}")
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            masks, cts, sec = run(sampler, steps)
            dices = [dice(a, b) for a, b in zip(masks, ref_masks)]
            lesions = [e[3] for e in evaluation]
            abs_hu = np.mean([np.abs(a[m] - b[m]).mean() for a, b, m in zip(cts, ref_cts, lesions)])
            mean_hu = np.mean([abs(a[m].mean() - b[m].mean()) for a, b, m in zip(cts, ref_cts, lesions)])
            print(f"{sampler:<14} {steps:>5} {sec:>9.3f} {ref_s / sec:>6.1f}x {np.mean(dices):>10.3f} "
                  f"{min(dices):>9.3f} {abs_hu:>13.1f} {mean_hu:>10.1f}")
    spread = np.mean([np.abs(c[m] - ctx.ct[m]).mean() for c, (ctx, _, _, m) in zip(ref_cts, evaluation)])
    print(f"for scale: the 200-step lesion differs from the healthy CT by {spread:.1f} HU (mean |dHU| in the lesion)")


if __name__ == "__main__":
    main()
