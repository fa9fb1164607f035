#!/usr/bin/env python
"""How far does the change LINet draws reach past the lesion, and how much of it does the write-back keep?

    python benchmarks/bench_linet_rim.py [--crop 48] [--steps 2] [--seed 0]

On the shared real CT (liver, 1 mm) a spherical lesion is inpainted by the LINet path with the released VQ-GAN
architecture (random weights: no trained weights exist on these machines, so this measures the architecture's
spread -- latent factor 2 plus the decoder's receptive field -- not trained texture). Printed per distance from
the lesion surface (voxels, negative inside): the network's own change |generated - VQ reconstruction of the
healthy crop| relative to its mean inside the lesion, and the write-back weight and the part of that change
it keeps, for the previous rim (dilate 2 + blend 2, the baseline, computed in the same run) and the current
default (4 + 4).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.processing import resample_to_output
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ld_augment.engines.diffusion.texture as texture_module  # noqa: E402
from ld_augment.engines import LesionContext, create_texture_engine  # noqa: E402
from ld_augment.engines.diffusion.crops import CropWindow, fit_crop  # noqa: E402
from ld_augment.engines.diffusion.intensity import denormalize_ct  # noqa: E402
from ld_augment.engines.diffusion.texture import blend_weight  # noqa: E402
from ld_augment.engines.procedural.fields import mask_slices  # noqa: E402
from ld_augment.reports import LesionReport  # noqa: E402

DATA = Path(os.environ.get("LD_TEST_DATA", REPO.parent / "shared" / "data"))
RIMS = {"previous 2+2": (2.0, 2.0), "default 4+4": (4.0, 4.0)}
DISTANCES = range(-2, 13)  # signed distance to the lesion surface in voxels (no 0: surface voxels are +-1)


def real_liver() -> tuple[np.ndarray, np.ndarray]:
    ct_img = nib.load(str(DATA / "ct" / "abdomen_ct_3mm_crop.nii.gz"))
    seg_img = nib.load(str(DATA / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"))
    ct = np.asarray(resample_to_output(ct_img, (1.0, 1.0, 1.0), order=1).dataobj, dtype=np.float32)
    seg = np.asarray(resample_to_output(seg_img, (1.0, 1.0, 1.0), order=0).dataobj).astype(np.int16)
    return ct, seg == 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ct, liver = real_liver()
    inner = ndimage.distance_transform_edt(liver)
    centre = np.unravel_index(int(np.argmax(inner)), liver.shape)
    grid = np.indices(liver.shape)
    lesion = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 7.0**2
    ctx = LesionContext(ct=ct, organ_seg=liver.astype(np.int16) * 5, organ_mask=liver, organ_name="liver",
                        spacing=(1.0, 1.0, 1.0), occupied=np.zeros(liver.shape, bool))
    report = LesionReport(organ_id=5)
    distance = ndimage.distance_transform_edt(~lesion) - ndimage.distance_transform_edt(lesion)
    body = ct > -500

    captured: dict[str, np.ndarray] = {}
    original = texture_module.inpaint_linet

    def recording(unet, vq, image, mask, context, **kwargs):
        out = original(unet, vq, image, mask, context, **kwargs)
        with torch.inference_mode():
            captured["recon"] = vq.decode(vq.encode(image))[0, 0].float().numpy()
        captured["generated"] = out[0, 0].float().numpy()
        return out

    texture_module.inpaint_linet = recording
    engine = create_texture_engine("diffusion", config="linet_tiny", vq_config="vq", steps=args.steps,
                                   crop=(args.crop,) * 3, init_seed=args.seed, network_layout="SAL")
    t0 = time.perf_counter()
    engine.render(ctx, lesion, report, np.random.default_rng(args.seed))
    seconds = time.perf_counter() - t0

    # the network's change and the write-back weights, in its crop (network layout)
    lay = engine.layout
    box = mask_slices(lay.to_network(lesion), (0, 0, 0))
    lo, hi = [s.start for s in box], [s.stop for s in box]
    size = fit_crop((args.crop,) * 3, [b - a + 2 * 8 for a, b in zip(lo, hi)], engine.divisor)
    window = CropWindow.for_box(lo, hi, size, lay.network_shape(ct.shape))
    d_crop = np.rint(window.extract(lay.to_network(distance), 99.0))
    b_crop = window.extract(lay.to_network(body), False)
    mask_crop = window.extract(lay.to_network(lesion), False)
    weights = {k: blend_weight(mask_crop, np.zeros_like(mask_crop), *rim) for k, rim in RIMS.items()}
    change = np.abs(denormalize_ct(captured["generated"]) - denormalize_ct(captured["recon"]))
    inside = change[mask_crop & b_crop].mean()
    print(f"real CT {ct.shape} 1 mm, lesion radius 7 voxels ({int(lesion.sum())} voxels), crop {size}, "
          f"{args.steps} DDIM steps, released VQ architecture (random weights), layout {lay.codes}, "
          f"render {seconds:.1f} s")
    print("distance | network change rel. to inside | " + " | ".join(f"kept {k}: weight, change" for k in RIMS))
    for d in DISTANCES:
        sel = (d_crop == d) & b_crop
        if not sel.any():
            continue
        rel = change[sel].mean() / inside
        cols = [f"{weights[k][sel].mean():.2f}, {(weights[k][sel] * change[sel]).mean() / inside:.3f}" for k in RIMS]
        print(f"{d:8d} | {rel:30.3f} | " + " | ".join(f"{c:>28}" for c in cols))
    outside = (d_crop > 0) & (d_crop <= DISTANCES[-1]) & b_crop
    for k in RIMS:
        kept = float((weights[k][outside] * change[outside]).sum() / change[outside].sum())
        print(f"{k}: share of the network's change within {DISTANCES[-1]} voxels outside the lesion that is "
              f"written back: {kept:.3f}; voxels written {int((weights[k] > 0).sum())}")


if __name__ == "__main__":
    main()
