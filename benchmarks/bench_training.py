"""Seconds per training step and peak memory of LMNet and LINet (and the VQ), tiny or released size.

A step is what `ld_augment.training` runs: the network's batch loss (LINet: frozen-VQ encode + UNet), backward,
AdamW and the EMA update, on random inputs of the training crop (data loading excluded: it overlaps with compute
when --num-workers is used). Each case runs in a fresh spawned process so peak RSS (CPU) / peak allocated
(CUDA) belongs to it alone. Precisions are measured in the same run, and ratios to fp32 are printed.
    python benchmarks/bench_training.py                          # tiny sizes, CPU
    python benchmarks/bench_training.py --released --device cuda --precision fp32,bf16
    python benchmarks/bench_training.py --nets vq,vqgan      # the full VQ-GAN objective vs L1 + codebook
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

from _device import device_name

# network -> (tiny config, tiny crop, released config, released crop); crops are image-space voxels
SIZES = {
    "lmnet": ("lmnet_tiny", (16, 32, 32), "lmnet", (64, 152, 152)),
    "linet": ("linet_tiny", (32, 32, 32), "linet_train", (128, 128, 128)),
    "vq": ("vq_tiny", (32, 32, 32), "vq", (128, 128, 128)),
    # the paper's VQ-GAN step: + LPIPS(VGG16, random weights here) on one slice + 2-D/3-D PatchGAN generator
    # term with the adaptive weight + the discriminators' own update (compare with "vq" = L1 + codebook)
    "vqgan": ("vq_tiny", (32, 32, 32), "vq", (128, 128, 128)),
}
VQ_FOR = {"linet_tiny": "vq_tiny", "linet_train": "vq"}


def _measure(net: str, released: bool, device: str, precision: str, batch: int, steps: int, threads: int
             ) -> dict[str, Any]:
    import torch

    from ld_augment.diffusion import DDPMSchedule
    from ld_augment.nets import PRESETS, autocast_context, build_network
    from ld_augment.training.linet import linet_batch_loss
    from ld_augment.training.lmnet import lmnet_batch_loss
    from ld_augment.training.loop import EMA, step_generator

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    tiny_cfg, tiny_crop, rel_cfg, rel_crop = SIZES[net]
    cfg_name, crop = (rel_cfg, rel_crop) if released else (tiny_cfg, tiny_crop)
    cfg = PRESETS[cfg_name]
    model = build_network(cfg, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ema = EMA(model, 0.9999)
    schedule = DDPMSchedule.create()
    context = None
    if net in ("lmnet", "linet") and cfg.context_dim is not None and not cfg.skip_context:
        context = torch.randn(batch, 7, cfg.context_dim, device=device)
    if net == "lmnet":
        x0 = (torch.rand(batch, 1, *crop, device=device) > 0.9).float()
        cond = torch.rand(batch, 3, *crop, device=device)
        loss_fn = lambda gen: lmnet_batch_loss(model, x0, cond, context, gen, schedule)  # noqa: E731
    elif net == "linet":
        vq = build_network(PRESETS[VQ_FOR[cfg_name]], device).eval().requires_grad_(False)
        image = torch.rand(batch, 1, *crop, device=device)
        lesion = torch.zeros(batch, 1, *crop, device=device)
        lesion[..., crop[0] // 4: crop[0] // 2, crop[1] // 4: crop[1] // 2, crop[2] // 4: crop[2] // 2] = 1
        loss_fn = lambda gen: linet_batch_loss(model, vq, image, lesion, context, gen, schedule).total  # noqa: E731
    elif net == "vq":
        image = torch.rand(batch, 1, *crop, device=device)

        def loss_fn(gen: torch.Generator) -> torch.Tensor:
            recon, codebook = model(image)
            return (recon.float() - image).abs().mean() + codebook.float()
    else:
        from ld_augment.nets.discriminators import VQGANDiscriminator
        from ld_augment.nets.perceptual import PerceptualLoss
        from ld_augment.training import distributed as D
        from ld_augment.training.loop import StepInfo
        from ld_augment.training.vq import VQGANObjective, VQGANOptions

        image = torch.rand(batch, 1, *crop, device=device)
        gan = VQGANOptions(random_backbone=True, disc_start=0)
        dctx = D.DistContext(0, 1, 0, torch.device(device), False)
        disc = VQGANDiscriminator().to(device).train()
        objective = VQGANObjective(model, gan, dctx, 0, PerceptualLoss(random_backbone=True).to(device), disc)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=1e-5, betas=(0.5, 0.9))
        counter = iter(range(10**9))

        pending: list[StepInfo] = []

        def loss_fn(gen: torch.Generator) -> torch.Tensor:
            if pending:  # the previous step's discriminator update (the loop runs it after the generator's)
                d_loss, _ = objective.discriminator_loss(disc, {"image": image}, pending.pop())
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            info = StepInfo(next(counter) + 1, 0, list(range(batch)), 0, dctx)
            loss, _ = objective.generator_loss(model, {"image": image}, info)
            pending.append(info)
            return loss

    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.startswith("cuda"))

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            loss = loss_fn(step_generator(0, i))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ema.update(model)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step(0)  # warm-up (allocations, cuDNN autotune)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    sync()
    seconds = (time.perf_counter() - t0) / steps
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    params = sum(p.numel() for p in model.parameters())
    return {"net": net, "config": cfg_name, "crop": crop, "precision": precision, "seconds": seconds,
            "peak_gib": peak, "params": params}


def _worker(queue: mp.Queue, kwargs: dict[str, Any]) -> None:
    try:
        queue.put(_measure(**kwargs))
    except Exception as exc:  # noqa: BLE001 - report (e.g. out of memory) and go on with the next case
        queue.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", **kwargs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--released", action="store_true", help="released sizes and crops (default: tiny)")
    ap.add_argument("--nets", default="lmnet,linet", help="comma list of lmnet, linet, vq, vqgan")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = ap.parse_args()
    import torch

    print(f"device: {device_name(args.device)} ({args.device}); torch {torch.__version__}; "
          f"{'released' if args.released else 'tiny'} size; batch {args.batch_size}")
    ctx = mp.get_context("spawn")
    rows = []
    for net in args.nets.split(","):
        for precision in args.precision.split(","):
            queue: mp.Queue = ctx.Queue()
            kwargs = dict(net=net, released=args.released, device=args.device, precision=precision,
                          batch=args.batch_size, steps=args.steps, threads=args.threads)
            proc = ctx.Process(target=_worker, args=(queue, kwargs))
            proc.start()
            proc.join()
            rows.append(queue.get() if not queue.empty() else {"error": f"exit code {proc.exitcode}", **kwargs})
    print(f"{'net':6s} {'config':12s} {'crop':>14s} {'prec':5s} {'params':>12s} {'s/step':>9s} {'peak GiB':>9s} ratio")
    base = {r["net"]: r["seconds"] for r in rows if "error" not in r and r["precision"] == "fp32"}
    for r in rows:
        if "error" in r:
            print(f"{r['net']:6s} {r['precision']:5s} failed: {r['error']}")
            continue
        crop = "x".join(map(str, r["crop"]))
        ratio = f"x{base[r['net']] / r['seconds']:.2f} vs fp32" if r["net"] in base and r["precision"] != "fp32" else ""
        plain = [q for q in rows if q.get("net") == "vq" and q.get("precision") == r["precision"] and "error" not in q]
        if r["net"] == "vqgan" and plain:
            ratio = f"{ratio} x{r['seconds'] / plain[0]['seconds']:.2f} the time of vq (L1 + codebook)".strip()
        print(f"{r['net']:6s} {r['config']:12s} {crop:>14s} {r['precision']:5s} {r['params']:12,d} "
              f"{r['seconds']:9.3f} {r['peak_gib']:9.2f} {ratio}")


if __name__ == "__main__":
    main()
