"""Proof of control: does the text, trained here, change what the networks draw?

Builds a small training set from the shared real CT (abdomen_ct_3mm_crop + its TotalSegmentator map): in each
case one procedurally drawn liver lesion, "round-like" (an ellipsoid) or "irregular" (lobulated), "hypodense
lesion" (liver mean - 300 HU) or "hyperdense lesion" (+ 300 HU), the two attributes independent. It trains a tiny
VQ, a tiny LINet with cross-attention on the text and a tiny LMNet with ld-augment's own training functions,
then samples at held-out places of the healthy liver with each text and prints, beside the same networks at
random initialisation (the baseline, measured in the same run, with the same noise draws):
  * LINet: lesion contrast = mean HU inside the inpainted lesion - mean HU of the liver around it, per density
    text; control = hyperdense - hypodense (DDIM --sample-steps, eta 0);
  * LMNet: sphericity (pi^(1/3) (6V)^(2/3) / A, marching-cubes area; 1 for a ball, ~0.92 / ~0.70 for the drawn
    round-like / irregular lesions, printed as the reference) of the sampled mask, per shape text; control =
    round-like - irregular, paired per held-out place. The mask measured is the original's post-processing,
    identical for trained and random networks: threshold the soft sample inside the requested box at
    0.9, 0.8, ..., 0.3, keep the largest component, take the threshold whose size is closest to the requested
    lesion's. Sampling is the inference engine's `sample_lmnet` at the released eta (1.0), --mask-steps steps.

Two LMNet settings differ from the released ones, both measured on networks trained here (1,500 steps; the
sphericity round-like / irregular of 8 or 32 held-out places):
  * box weight --lmnet-fg-weight 10 instead of train_lmnet's 1000 (the original's, which stays the library
    default). 1000 balances the loss for the released 64x152x152 crop, where the box is a few thousandths of the
    voxels; in this 16^3 crop the box is ~30% of them and 1000 leaves the outside ~0.2% of the loss, so it stays
    untrained: its eps error (MSE ~0.2) makes the sampler drift (pred_x0 |.| ~8 instead of [0, 1]) and the masks
    come out ragged (0.26 / 0.26 with 15 DDIM steps eta 0; 0.34 / 0.36 with 50 steps eta 1). At 10 the outside
    carries ~20% of the loss, the order of its share in the released crop (~15% for a 15^3-voxel box).
  * eta 1.0 (the released inference setting) instead of the deterministic eta 0 this script used: with the
    box weight 10 weights, eta 0 still drifts (0.48 / 0.49 at 15 steps, 0.47 / 0.46 at 50, no control) while
    eta 1 re-noises the drift away (0.78 / 0.69; 100 steps give the same).
The network does read the text (box weight 10: at t=100 the eps loss of training crops is ~20% lower
with the right shape text than with the other one); 2,500 LMNet steps instead of 1,500 widen the control
(+0.06..0.08 -> +0.09..0.18 over two noise seeds); a deeper tiny LMNet (channel_mult 1,2,4) or 48 instead of 16
cases did not help.
Still weak: even so most places drift. The default run gave 0.872 / 0.699 (control +0.173 +- 0.039, random init
0.218 / 0.218) but only 6-7 of the 32 places were clean blobs; 13-14 spilled out of the box and 12 were empty
(the same places for both texts), so the means cover 20 places and mix clean draws with thresholds of drift.
The "places clean/spills/empty" rows print these counts.

    python benchmarks/bench_control.py                                   # ~15 minutes on 1 CPU thread
    torchrun --standalone --nproc_per_node=2 benchmarks/bench_control.py  # the same, as 2-process DDP
    python benchmarks/bench_control.py --save-dir tiny_nets              # keep vq.pt, linet.pt, lmnet.pt
    python benchmarks/bench_control.py --load-dir tiny_nets --mask-steps 100  # re-evaluate kept networks

Batch size is global: under torchrun each process takes batch / world_size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from _device import device_name

LIVER_V2, LIVER_V1 = 5, 5
SHAPES = ("round-like", "irregular")
DENSITIES = ("hypodense lesion", "hyperdense lesion")
CONTRAST_HU = 300.0
# crops in network order (the released layout [S, A, L]); the CT has 30 axial slices of 3 mm
CROP = (16, 24, 24)  # VQ and LINet
LMNET_CROP = (16, 16, 16)  # smaller: LMNet attends over full-resolution/2 tokens, its cost grows fast with the crop


def _ball(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def lesion_mask(shape: tuple[int, ...], centre: np.ndarray, radius: float, kind: str, rng: np.random.Generator
                ) -> np.ndarray:
    """round-like: a near-sphere; irregular: a smaller core with four lobes pushed out in random directions."""
    if kind == "round-like":
        return _ball(shape, centre, radius * rng.uniform(0.9, 1.1, 3))
    mask = _ball(shape, centre, np.full(3, radius * 0.6))
    for _ in range(4):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        mask |= _ball(shape, centre + d * radius * 0.85, np.full(3, radius * rng.uniform(0.4, 0.55)))
    return mask


def report(shape: str, density: str) -> dict[str, Any]:
    return {str(LIVER_V1): [f"{shape},", "", {
        "lesion location": str(LIVER_V1), "shape": f"{shape},", "density": f"{density},"}, [[[0, 0, 0]], [[1, 1, 1]]]]}


def liver_centres(liver: np.ndarray, n: int, margin: int, rng: np.random.Generator) -> list[np.ndarray]:
    inner = ndimage.binary_erosion(liver, iterations=margin)
    pts = np.argwhere(inner)
    return [pts[i].astype(np.float32) for i in rng.choice(len(pts), size=n, replace=False)]


def build_dataset(shared: Path, out: Path, n_cases: int, seed: int, contrast: float = CONTRAST_HU,
                  radius: tuple[float, float] = (3.5, 4.5)) -> dict[str, Any]:
    """Case folders (ct, label, totalseg_v1, report) with one lesion each; returns the healthy arrays."""
    from ld_augment.organs.registry import convert_labels

    ct_img = nib.load(str(shared / "ct" / "abdomen_ct_3mm_crop.nii.gz"))
    seg_img = nib.load(str(shared / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"))
    ct = np.asarray(ct_img.dataobj, dtype=np.float32)
    seg_v1 = convert_labels(np.asarray(seg_img.dataobj).astype(np.int16), "v2", "v1").astype(np.uint8)
    liver = seg_v1 == LIVER_V1
    liver_hu = float(ct[liver].mean())
    rng = np.random.default_rng(seed)
    for i, centre in enumerate(liver_centres(liver, n_cases, 5, rng)):
        shape, density = SHAPES[i % 2], DENSITIES[(i // 2) % 2]
        les = lesion_mask(ct.shape, centre, rng.uniform(*radius), shape, rng) & liver
        sign = -1.0 if density.startswith("hypo") else 1.0
        lesion_ct = ct.copy()
        lesion_ct[les] = liver_hu + sign * contrast + rng.normal(0, 8, int(les.sum()))
        label = liver.astype(np.uint8)
        label[les] = 2
        case = out / f"case_{i:02d}"
        case.mkdir(parents=True)
        nib.save(nib.Nifti1Image(lesion_ct.astype(np.int16), ct_img.affine), str(case / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(label, ct_img.affine), str(case / "label.nii.gz"))
        nib.save(nib.Nifti1Image(seg_v1, ct_img.affine), str(case / "totalseg_v1.nii.gz"))
        (case / "report.json").write_text(json.dumps(report(shape, density)))
    return {"ct": ct, "seg_v1": seg_v1, "liver": liver, "liver_hu": liver_hu}


def sphericity(mask: np.ndarray) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    if mask.sum() < 8:
        return float("nan")
    verts, faces, _, _ = marching_cubes(np.pad(mask.astype(np.float32), 1), 0.5)
    area = mesh_surface_area(verts, faces)
    return float(np.pi ** (1 / 3) * (6 * mask.sum()) ** (2 / 3) / area)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(sizes.argmax()))


class Evaluator:
    """Held-out places of the healthy liver, cut as network crops (same layout as training)."""

    def __init__(self, healthy: dict[str, Any], n_eval: int, seed: int, layout: str, crop: tuple[int, ...],
                 radius: float = 4.0) -> None:
        from ld_augment.io.network_layout import layout as as_layout
        from ld_augment.training.crops import crop_start, extract

        self.lay = as_layout(layout)
        to = self.lay.to_network
        ct, seg, liver = (np.ascontiguousarray(to(healthy[k])) for k in ("ct", "seg_v1", "liver"))
        self.items = []
        rng = np.random.default_rng(seed + 1000)
        for centre in liver_centres(liver, n_eval, 5, rng):
            ball = _ball(liver.shape, centre, np.full(3, radius)) & liver
            pts = np.argwhere(ball)
            lo, hi = pts.min(0), pts.max(0) + 1
            start = crop_start(lo, hi, liver.shape, crop, rng)
            box = np.zeros(liver.shape, bool)
            box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
            cut = lambda a, fill=0: extract(a, start, crop, fill)  # noqa: E731
            self.items.append({"ct": cut(ct, -1000.0), "seg": cut(seg).astype(np.float32) / 104.0,
                               "liver": cut(liver).astype(bool), "lesion": cut(ball).astype(bool),
                               "box": cut(box).astype(np.float32)})

    def linet_contrast(self, unet: Any, vq: Any, encoder: Any, density: str, steps: int) -> list[float]:
        """Inpaint every held-out place in one batch; contrast = lesion core - liver ring, in decoded HU."""
        import torch
        import torch.nn.functional as F

        from ld_augment.diffusion import sample_masked_ddim
        from ld_augment.engines.diffusion.intensity import denormalize_ct, normalize_ct
        from ld_augment.engines.diffusion.sampling import ddim_schedule
        from ld_augment.reports import conditioning_texts, reports_from_type_json

        rep = reports_from_type_json(report("round-like", density))[0]
        n = len(self.items)
        context = encoder.encode_attributes([conditioning_texts(rep, purpose="linet")] * n)
        image = torch.from_numpy(np.stack([normalize_ct(it["ct"])[None] for it in self.items]).astype(np.float32))
        lesion = torch.from_numpy(np.stack([it["lesion"][None] for it in self.items]).astype(np.float32))
        with torch.no_grad():
            z0 = vq.encode(image).float()
            mask = (F.interpolate(lesion, size=z0.shape[2:], mode="nearest") > 0.5).float()
            gen = torch.Generator().manual_seed(0)
            x_T = torch.randn(z0.shape, generator=gen)
            out = sample_masked_ddim(lambda x, t, c: unet(x, t, context=c), x_T, z0, mask,
                                     ddim_schedule(steps, 0.0), context=context)
            z_q, _, _ = vq.quantize_latent(out.sample[:, : z0.shape[1]])
            decoded = vq.decode_quantized(z_q).float().clamp(0, 1).numpy()
        values = []
        for k, it in enumerate(self.items):
            hu = denormalize_ct(decoded[k, 0])
            core = ndimage.binary_erosion(it["lesion"])
            ring = ndimage.binary_dilation(it["lesion"], iterations=3) & ~ndimage.binary_dilation(it["lesion"]) \
                & it["liver"]
            values.append(float(hu[core if core.any() else it["lesion"]].mean() - hu[ring].mean()))
        return values

    def lmnet_sphericity(self, unet: Any, encoder: Any, shape: str, steps: int, eta: float
                         ) -> tuple[list[float], list[str]]:
        """Sample every held-out box in one batch with the inference engine's sampler (`sample_lmnet`, DDIM
        `steps`, stochastic `eta`, one seeded generator per place, the same draws for every network and text);
        post-process as the original (threshold 0.9..0.3 whose largest component is closest in size to the
        requested lesion), then the sphericity of that mask. Also each place's status: "empty" (under 8 voxels
        after that rule: sphericity nan, left out of the means), "spills" (the soft sample is > 0.5 on over 5% of
        the voxels outside the box: the sampler drifted, the mask is a threshold of that drift, not a drawn
        lesion) or "clean"."""
        import torch

        from ld_augment.engines.diffusion.sampling import sample_lmnet
        from ld_augment.reports import conditioning_texts, reports_from_type_json

        rep = reports_from_type_json(report(shape, "hypodense lesion"))[0]
        n = len(self.items)
        context = encoder.encode_attributes([conditioning_texts(rep, purpose="lmnet")] * n)
        cond = torch.from_numpy(np.stack([np.stack([it["seg"], it["liver"].astype(np.float32), it["box"]])
                                          for it in self.items]))
        gens = [torch.Generator().manual_seed(10_000 + k) for k in range(n)]
        soft = sample_lmnet(unet, cond, context, steps=steps, eta=eta, generator=gens)[:, 0].numpy()
        values, status = [], []
        for k, it in enumerate(self.items):
            outside = ~it["box"].astype(bool)
            want = int(it["lesion"].sum())
            best = min((largest_component((soft[k] > th) & it["box"].astype(bool)) for th in
                        np.arange(0.9, 0.2, -0.1)), key=lambda m: abs(int(m.sum()) - want))
            values.append(sphericity(best))
            status.append("empty" if not np.isfinite(values[-1]) else
                          "spills" if (soft[k][outside] > 0.5).mean() > 0.05 else "clean")
        return values, status


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _sem(values: list[float]) -> float:
    """Standard error of the mean of the finite values."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.std(finite, ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--vq-steps", type=int, default=500)
    ap.add_argument("--linet-steps", type=int, default=4000)
    ap.add_argument("--lmnet-steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=4, help="global batch (split over torchrun processes)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--contrast", type=float, default=CONTRAST_HU, help="HU of the drawn lesions vs the liver")
    ap.add_argument("--radius", type=float, nargs=2, default=(5.0, 6.0), help="lesion radius range (voxels)")
    ap.add_argument("--lmnet-fg-weight", type=float, default=10.0,
                    help="LMNet loss weight inside the box (train_lmnet's default, the original's 1000, is sized "
                         "for the released 64x152x152 crop; see the docstring)")
    ap.add_argument("--eval", type=int, default=8, help="held-out places sampled per density text (LINet)")
    ap.add_argument("--sample-steps", type=int, default=15, help="LINet DDIM steps per sample (eta 0)")
    ap.add_argument("--mask-eval", type=int, default=32, help="held-out places sampled per shape text (LMNet)")
    ap.add_argument("--mask-steps", type=int, default=50, help="LMNet DDIM steps per sample")
    ap.add_argument("--mask-eta", type=float, default=None,
                    help="LMNet DDIM eta (default: the released inference setting, 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-dir", help="keep the trained tiny vq.pt, linet.pt, lmnet.pt (+ figures.json) here")
    ap.add_argument("--load-dir", help="skip training: evaluate the checkpoints a --save-dir run kept")
    ap.add_argument("--shared", default=os.environ.get("LD_TEST_DATA", str(Path(__file__).resolve().parents[1].parent
                                                                          / "shared" / "data")))
    args = ap.parse_args()

    import torch

    from ld_augment.nets import LINET_TINY, VQ_TINY, load_checkpoint
    from ld_augment.text import create_encoder
    from ld_augment.training import RunOptions, VQGANOptions, train_linet, train_lmnet, train_vq
    from ld_augment.training import distributed as D
    from ld_augment.training.loop import seeded_build

    torch.set_num_threads(args.threads)
    ctx = D.init("cpu")
    if args.batch % ctx.world_size:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {ctx.world_size} processes")
    per_rank = args.batch // ctx.world_size
    shared = Path(args.shared)
    if not (shared / "ct" / "abdomen_ct_3mm_crop.nii.gz").is_file():
        raise SystemExit(f"shared CT not found under {shared} (set LD_TEST_DATA or --shared)")
    work = Path(D.broadcast_object(ctx, tempfile.mkdtemp(prefix="bench_control_") if ctx.is_main else None))
    t0 = time.perf_counter()
    healthy = None
    if ctx.is_main:
        healthy = build_dataset(shared, work / "data", args.cases, args.seed, args.contrast, tuple(args.radius))
    D.barrier(ctx)
    common = dict(batch_size=per_rank, lr=args.lr, seed=args.seed, progress=ctx.is_main, spacing=None,
                  save_every=10**9)
    timings: dict[str, float] = {}
    if args.load_dir:  # evaluate checkpoints saved by an earlier --save-dir run (e.g. other sampling settings)
        from types import SimpleNamespace

        vq, li, lm = (SimpleNamespace(checkpoint=Path(args.load_dir) / f"{n}.pt") for n in ("vq", "linet", "lmnet"))
    else:
        t = time.perf_counter()
        vq = train_vq(work / "data", work / "vq", config={**VQ_TINY.to_dict(), "n_embed": 256},
                      steps=args.vq_steps, gan=VQGANOptions(perceptual_weight=0, disc_weight=0), crop_size=CROP,
                      **common)
        timings["vq"] = time.perf_counter() - t
        linet_cfg = {**LINET_TINY.to_dict(), "skip_context": False}  # the training config reads the text
        t = time.perf_counter()
        li = train_linet(work / "data", work / "linet", vq=vq.checkpoint, config=linet_cfg, steps=args.linet_steps,
                         ema_decay=0.995, run=RunOptions(warmup_steps=20), crop_size=CROP, **common)
        timings["linet"] = time.perf_counter() - t
        t = time.perf_counter()
        lm = train_lmnet(work / "data", work / "lmnet", config="tiny", steps=args.lmnet_steps, ema_decay=0.995,
                         run=RunOptions(warmup_steps=20), crop_size=LMNET_CROP, fg_weight=args.lmnet_fg_weight,
                         **common)
        timings["lmnet"] = time.perf_counter() - t
    if not ctx.is_main:
        D.shutdown(ctx)
        return
    assert healthy is not None
    vq_net = load_checkpoint(vq.checkpoint)[0].eval()
    li_net, li_cfg, li_meta = load_checkpoint(li.checkpoint)
    lm_net, lm_cfg, lm_meta = load_checkpoint(lm.checkpoint)
    enc_li = create_encoder(li_meta["extra"]["text_encoder"]["name"], **li_meta["extra"]["text_encoder"]["options"])
    enc_lm = create_encoder(lm_meta["extra"]["text_encoder"]["name"], **lm_meta["extra"]["text_encoder"]["options"])
    from ld_augment.nets import build_network

    baselines = {"linet": seeded_build(lambda: build_network(li_cfg), args.seed + 7).eval(),
                 "lmnet": seeded_build(lambda: build_network(lm_cfg), args.seed + 7).eval()}
    r_eval = float(np.mean(args.radius))
    ev_li = Evaluator(healthy, args.eval, args.seed, li_meta["extra"].get("layout", "SAL"), CROP, r_eval)
    ev_lm = Evaluator(healthy, args.mask_eval, args.seed, lm_meta["extra"].get("layout", "SAL"), LMNET_CROP, r_eval)
    from ld_augment.engines.diffusion.common import RELEASED_ETA

    mask_eta = RELEASED_ETA if args.mask_eta is None else args.mask_eta
    t = time.perf_counter()
    fig: dict[str, Any] = {"linet": {}, "lmnet": {}, "lmnet_status": {}}
    for name, net in (("trained", li_net.eval()), ("random-init", baselines["linet"])):
        fig["linet"][name] = {d: ev_li.linet_contrast(net, vq_net, enc_li, d, args.sample_steps) for d in DENSITIES}
    for name, net in (("trained", lm_net.eval()), ("random-init", baselines["lmnet"])):
        runs = {s: ev_lm.lmnet_sphericity(net, enc_lm, s, args.mask_steps, mask_eta) for s in SHAPES}
        fig["lmnet"][name] = {s: r[0] for s, r in runs.items()}
        fig["lmnet_status"][name] = {s: r[1] for s, r in runs.items()}
    timings["sampling"] = time.perf_counter() - t

    print(f"\nbench_control on {device_name('cpu')}, world_size {ctx.world_size}, global batch {args.batch}, "
          f"{args.cases} cases, steps vq/linet/lmnet {args.vq_steps}/{args.linet_steps}/{args.lmnet_steps}, "
          f"LMNet box weight {args.lmnet_fg_weight:g}")
    print(f"sampling: LINet {args.eval} held-out places x {args.sample_steps} DDIM steps (eta 0); LMNet "
          f"{args.mask_eval} places x {args.mask_steps} DDIM steps (eta {mask_eta:g})")
    print(f"training data: liver {healthy['liver_hu']:.0f} HU; lesions at {-args.contrast:+.0f} / "
          f"{args.contrast:+.0f} HU, radius {args.radius[0]}-{args.radius[1]} voxels; shapes' sphericity below")
    print(f"{'network':7} {'text':20} {'trained':>18} {'random-init':>18}")
    for d in DENSITIES:
        a, b = _mean(fig["linet"]["trained"][d]), _mean(fig["linet"]["random-init"][d])
        print(f"{'LINet':7} {d:20} {a:+15.1f} HU {b:+15.1f} HU")
    ctrl = {k: _mean(fig["linet"][k][DENSITIES[1]]) - _mean(fig["linet"][k][DENSITIES[0]]) for k in fig["linet"]}
    print(f"{'LINet':7} {'hyper - hypo':20} {ctrl['trained']:+15.1f} HU {ctrl['random-init']:+15.1f} HU")
    for s in SHAPES:
        a, b = (f"{_mean(fig['lmnet'][k][s]):.3f} +- {_sem(fig['lmnet'][k][s]):.3f}" for k in fig["lmnet"])
        print(f"{'LMNet':7} {s:20} {a:>18} {b:>18}   (sphericity +- s.e.m.)")
    sctl = {k: [a - b for a, b in zip(fig["lmnet"][k][SHAPES[0]], fig["lmnet"][k][SHAPES[1]])] for k in fig["lmnet"]}
    a, b = (f"{_mean(sctl[k]):+.3f} +- {_sem(sctl[k]):.3f}" for k in fig["lmnet"])
    print(f"{'LMNet':7} {'round - irregular':20} {a:>18} {b:>18}   (paired per place)")
    for s in SHAPES:
        a, b = ("/".join(str(fig["lmnet_status"][k][s].count(c)) for c in ("clean", "spills", "empty"))
                for k in fig["lmnet"])
        print(f"{'LMNet':7} {s:20} {a:>18} {b:>18}   (places clean/spills/empty)")
    rng = np.random.default_rng(0)
    ref = {s: _mean([sphericity(lesion_mask((32, 32, 32), np.full(3, 16.0), r_eval, s, rng)) for _ in range(8)])
           for s in SHAPES}
    print(f"reference (drawn training lesions): round-like {ref['round-like']:.3f}, irregular {ref['irregular']:.3f}")
    total = time.perf_counter() - t0
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f", total {total:.0f}")
    if args.save_dir:
        save = Path(args.save_dir)
        save.mkdir(parents=True, exist_ok=True)
        for p in (vq.checkpoint, li.checkpoint, lm.checkpoint):
            if Path(p).resolve() != (save / Path(p).name).resolve():
                shutil.copy(p, save / Path(p).name)
        (save / "figures.json").write_text(json.dumps({"figures": fig, "timings": timings, "args": vars(args),
                                                       "world_size": ctx.world_size}, indent=1))
        print(f"tiny checkpoints and figures in {save}")
    shutil.rmtree(work, ignore_errors=True)
    D.shutdown(ctx)


if __name__ == "__main__":
    main()
