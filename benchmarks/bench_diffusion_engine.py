"""Seconds per lesion of diffusion synthesis: ours against the original procedure, timed in the same run.

Three procedures on the same device, inputs and random-weight networks (cost does not depend on weight values),
each in a fresh spawned process (so CPU peak RSS is its own; CUDA: peak allocated):

* original -- the released inference rebuilt from the same modules: the whole CT VQ-encoded, every lesion
  one at a time (LMNet DDIM, then LINet masked DDIM on its latent window written back into the whole latent),
  the whole latent decoded once; DDIM eta 1; UNets and VQ cast to fp16 (`.half()`, as the released LINet) on
  CUDA, fp32 on CPU (CPU fp16 convolutions are not what the original ran); materialized (non-fused) attention.
* ours -- what the engines do: each lesion's crop VQ-encoded and decoded, all lesions of the case in one
  batch per network (each with its own generator), SDPA attention, precision "auto" (bf16 autocast on CUDA,
  fp32 on CPU), the same DDIM and step count; ``--compile`` adds torch.compile.
* ours + fast sampler -- ours with DPM-Solver++(2M) and ``--fast-steps`` network calls.

The networks dominate the cost (reference/COSTS.md); the CPU work both share per lesion (crop extraction,
threshold search, write-back) is left out. The whole-CT VQ runs in slabs of ``--vq-slab`` slices along the
first axis (the same FLOPs as one piece, bounded memory; the original needed two GPUs for it). On CPU the
seconds are the process's CPU seconds by default (``--clock``): on a shared machine, wall time mostly measures
the other users.

    python benchmarks/bench_diffusion_engine.py                    # reduced size, CPU, < 5 min on 2 cores
    python benchmarks/bench_diffusion_engine.py --released --device cuda --steps 200   # see gpu_check.sh
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

from _device import device_name

ORIGINAL_STEPS = 200
#: "wall" (perf_counter) or "cpu" (process CPU time of all threads): on a shared CPU machine wall time measures
#: the other users' load as much as the work, so CPU runs default to the process's CPU seconds.
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _now() -> float:
    return _clock()
SHORT_STEPS = 2  # a second, short run gives each procedure's cost per step and its once-per-CT cost


@dataclass(frozen=True)
class Size:
    volume: tuple[int, int, int]  # the whole CT (the original VQ-encodes all of it)
    mask_crop: tuple[int, int, int]  # LMNet input crop
    texture_crop: tuple[int, int, int]  # LINet image crop (latent = crop / 2)
    vq_slab: int  # slices per whole-CT VQ slab


SIZES = {
    # released networks; crops and CT at 1/8 of the released sizes per axis (LMNet's 152 -> 20, a multiple of 4),
    # which keeps the whole-CT VQ's share of the original's cost at 200 steps (~7 %, reference/COSTS.md)
    "reduced": Size((40, 64, 64), (8, 20, 20), (16, 16, 16), 40),
    "released": Size((320, 512, 512), (64, 152, 152), (128, 128, 128), 32),
}
# dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets
GPU_PEAKS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L40": 181.0,
             "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}


def gpu_peak(name: str) -> float | None:
    return next((peak for key, peak in GPU_PEAKS.items() if key in name), None)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _inputs(size: Size, lesions: int, device: str) -> dict[str, Any]:
    """A CT, one lesion centre per lesion spread along the first axis, LMNet conditions and latent masks."""
    import torch

    g = torch.Generator().manual_seed(0)
    vol = torch.rand((1, 1, *size.volume), generator=g)
    tex, lat = size.texture_crop, [c // 2 for c in size.texture_crop]
    starts = []  # texture-crop corners in the CT, inside it
    for k in range(lesions):
        frac = (k + 1) / (lesions + 1)
        starts.append([int(frac * (n - c)) if i == 0 else (n - c) // 2 for i, (n, c) in enumerate(zip(size.volume, tex))])
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) - n / 2 + 0.5 for n in lat], indexing="ij"))
    ball = ((grid / (torch.tensor(lat).view(3, 1, 1, 1) / 4)) ** 2).sum(0) <= 1
    return {
        "volume": vol.to(device),
        "starts": starts,
        "crops": torch.cat([vol[(0, 0, *[slice(s, s + c) for s, c in zip(st, tex)])][None, None] for st in starts]).to(device),
        "cond": torch.rand((lesions, 3, *size.mask_crop), generator=g).to(device),
        "context": torch.randn((lesions, 6, 512), generator=g).to(device),
        "latent_mask": ball.float()[None, None].expand(lesions, 1, *lat).contiguous().to(device),
    }


def _generators(lesions: int, device: str):
    import torch

    return [torch.Generator(device=device).manual_seed(100 + k) for k in range(lesions)]


def _networks(device: str, original: bool):
    import torch

    from ld_augment.nets import LINET_RELEASED, LMNET_RELEASED, VQ_RELEASED, build_network, set_attention_backend

    torch.manual_seed(0)
    nets = [build_network(cfg, device).eval() for cfg in (LMNET_RELEASED, LINET_RELEASED, VQ_RELEASED)]
    if original:
        for net in nets:
            set_attention_backend(net, "materialized")
            if device.startswith("cuda"):
                net.half()
    return nets


def original_procedure(nets, inp: dict[str, Any], size: Size, steps: int, device: str) -> dict[str, float]:
    """The released inference, lesion after lesion (ARCHITECTURE.md 6); returns seconds per phase."""
    import torch

    from ld_augment.diffusion import sample_masked_ddim
    from ld_augment.engines.diffusion.sampling import ddim_schedule, sample_lmnet

    lmnet, linet, vq = nets
    gens = _generators(len(inp["starts"]), device)
    times = {"vq": 0.0, "steps": 0.0}

    def linet_fn(x, t, context):
        return linet(x, t, context=context).float()

    with torch.inference_mode():
        _sync(device)
        t0 = _now()
        slabs = [vq.encode(inp["volume"][:, :, i : i + size.vq_slab]).float()
                 for i in range(0, size.volume[0], size.vq_slab)]
        latent = torch.cat(slabs, dim=2)
        _sync(device)
        t1 = _now()
        schedule = ddim_schedule(steps, 1.0)
        for k, start in enumerate(inp["starts"]):
            sample_lmnet(lmnet, inp["cond"][k : k + 1], inp["context"][k : k + 1], steps=steps, eta=1.0,
                         generator=gens[k], precision="fp32")
            window = (slice(None), slice(None), *[slice(s // 2, s // 2 + c // 2) for s, c in zip(start, size.texture_crop)])
            z0 = latent[window]
            x_T = torch.randn(z0.shape, generator=gens[k], device=device)
            out = sample_masked_ddim(linet_fn, x_T, z0, inp["latent_mask"][k : k + 1], schedule, generator=gens[k])
            latent[window] = out.sample[:, : z0.shape[1]]
        _sync(device)
        t2 = _now()
        half = size.vq_slab // 2
        for i in range(0, latent.shape[2], half):
            vq.decode(latent[:, :, i : i + half])
        _sync(device)
        t3 = _now()
    times["vq"] = (t1 - t0) + (t3 - t2)
    times["steps"] = t2 - t1
    return times


def our_procedure(nets, inp: dict[str, Any], size: Size, steps: int, device: str, sampler: str) -> dict[str, float]:
    """The engines' path: all lesions in one batch per network, crop VQ, precision "auto", SDPA."""
    import torch

    from ld_augment.engines.diffusion.sampling import inpaint_linet, sample_lmnet

    lmnet, linet, vq = nets
    gens = _generators(len(inp["starts"]), device)
    with torch.inference_mode():
        _sync(device)
        t0 = _now()
        sample_lmnet(lmnet, inp["cond"], inp["context"], steps=steps, eta=1.0, generator=gens, precision="auto",
                     sampler=sampler)
        inpaint_linet(linet, vq, inp["crops"], inp["latent_mask"], None, steps=steps, eta=1.0, generator=gens,
                      precision="auto", sampler=sampler)
        _sync(device)
    return {"steps": _now() - t0, "vq": 0.0}


def _measure(which: str, device: str, size_name: str, lesions: int, steps: int, sampler: str, compile_mode: str | None,
             threads: int, clock: str = "wall") -> dict[str, Any]:
    """One procedure in this (fresh) process: a short warm-up, then the timed run."""
    import torch

    global _clock
    _clock = _CLOCKS[clock]

    from ld_augment.nets import maybe_compile

    if threads:
        torch.set_num_threads(threads)
    original, size = which == "original", SIZES[size_name]
    nets = _networks(device, original)
    if compile_mode and not original:
        nets[0], nets[1] = maybe_compile(nets[0], compile_mode), maybe_compile(nets[1], compile_mode)
    inp = _inputs(size, lesions, device)

    def run(n: int) -> dict[str, float]:
        if original:
            return original_procedure(nets, inp, size, n, device)
        return our_procedure(nets, inp, size, n, device, sampler)

    short = SHORT_STEPS if sampler == "ddim" else 3
    run(short if device.startswith("cuda") else 1)  # warm-up: cuDNN autotuning, compilation, allocator
    short_seconds = sum(run(short).values())  # with the full run: the cost per step and the once-per-CT cost
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = run(steps)
    seconds = sum(times.values())
    per_step = (seconds - short_seconds) / max(steps - short, 1)
    return {"which": which, "times": times, "seconds": seconds, "peak_gib": _peak_gib(device),
            "per_step": per_step, "once": seconds - steps * per_step}


def _in_subprocess(args: tuple) -> dict[str, Any]:
    return _measure(*args)


def _flops(size: Size, device: str) -> dict[str, float]:
    """FLOPs (matmuls + convolutions) of one forward of each network at batch 1, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ld_augment.nets import LINET_RELEASED, LMNET_RELEASED, VQ_RELEASED, build_network

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return float(counter.get_total_flops())

    meta = torch.device("meta")
    lm, li, vq = (build_network(c, meta) for c in (LMNET_RELEASED, LINET_RELEASED, VQ_RELEASED))
    t = torch.full((1,), 500, device=meta)
    lat = [c // 2 for c in size.texture_crop]

    def vq_cost(shape: tuple[int, ...]) -> float:
        z = torch.empty((1, 4, *[s // 2 for s in shape]), device=meta)
        quantize = 2.0 * z[0, 0].numel() * VQ_RELEASED.n_embed * VQ_RELEASED.embed_dim  # distances to the codes
        return (count(lambda: vq.encode(torch.empty((1, 1, *shape), device=meta)))
                + count(lambda: vq.decode_quantized(z)) + quantize)

    return {
        "lmnet": count(lambda: lm(torch.empty((1, 4, *size.mask_crop), device=meta), t,
                                  torch.empty((1, 6, 512), device=meta))),
        "linet": count(lambda: li(torch.empty((1, 5, *lat), device=meta), t)),
        "vq_crop": vq_cost(size.texture_crop),
        "vq_whole": vq_cost(size.volume),
    }


def _cpu_peak_tflops() -> float:
    """This CPU's practical fp32 peak: a large matrix product, measured now (no data-sheet value for a CPU)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    t0 = _now()
    for _ in range(5):
        torch.mm(a, b)
    return 5 * 2 * 2048**3 / (_now() - t0) / 1e12


def _linet_step_tflops(size: Size, lesions: int, device: str, flops: float) -> float:
    """Achieved TFLOP/s of one batched LINet step as ours runs it (precision "auto", SDPA)."""
    import torch

    from ld_augment.nets import LINET_RELEASED, autocast_context, build_network

    net = build_network(LINET_RELEASED, device).eval()
    x = torch.randn((lesions, 5, *[c // 2 for c in size.texture_crop]), device=device)
    t = torch.full((lesions,), 500, device=device)
    with torch.inference_mode(), autocast_context(device, "auto"):
        net(x, t)
        _sync(device)
        t0 = _now()
        repeats = 3 if device.startswith("cuda") else 1
        for _ in range(repeats):
            net(x, t)
        _sync(device)
    return repeats * lesions * flops / (_now() - t0) / 1e12


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", action="store_true", help="released crops and a 512x512x320 CT")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lesions", type=int, default=3, help="lesions per CT (the original's maximum is 3)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps for original and ours (equal steps)")
    parser.add_argument("--fast-sampler", default="dpmsolver++")
    parser.add_argument("--fast-steps", type=int, default=10)
    parser.add_argument("--compile", default=None, help="torch.compile mode for ours (e.g. reduce-overhead)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(_CLOCKS), default=None,
                        help="wall or cpu (process CPU seconds); default: wall on CUDA, cpu on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: table / GEMM)")
    args = parser.parse_args(argv)

    import torch

    global _clock
    clock = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    if clock == "cpu" and args.device.startswith("cuda"):
        parser.error("--clock cpu does not see GPU time; use wall on CUDA")
    _clock = _CLOCKS[clock]
    size_name = "released" if args.released else "reduced"
    size = SIZES[size_name]
    name = device_name(args.device)
    print(f"device: {name}; torch {torch.__version__}; {'released' if args.released else 'reduced'} size, released "
          f"network widths (random weights); {args.lesions} lesions/CT; {args.steps} DDIM steps (eta 1)")
    print(f"CT {size.volume}, LMNet crop {size.mask_crop}, LINet crop {size.texture_crop}; seconds = {clock} clock"
          + (" (process CPU seconds of all threads)" if clock == "cpu" else ""))
    if args.device.startswith("cuda"):
        peak, peak_what = args.peak_tflops or gpu_peak(name), "dense bf16 data-sheet peak"
    else:
        peak, peak_what = args.peak_tflops or _cpu_peak_tflops(), "fp32 GEMM peak measured now"
    flops = _flops(size, args.device)
    per_step = flops["lmnet"] + flops["linet"]
    work = {
        "original": args.lesions * args.steps * per_step + flops["vq_whole"],
        "ours": args.lesions * (args.steps * per_step + flops["vq_crop"]),
        "fast": args.lesions * (args.fast_steps * per_step + flops["vq_crop"]),
    }
    ctx = mp.get_context("spawn")
    runs = [("original", args.steps, "ddim"), ("ours", args.steps, "ddim"), ("fast", args.fast_steps, args.fast_sampler)]
    results = {}
    for which, steps, sampler in runs:
        with ctx.Pool(1) as pool:
            results[which] = pool.apply(_in_subprocess, ((which, args.device, size_name, args.lesions, steps, sampler,
                                                          args.compile, args.threads, clock),))

    label = {"original": f"original procedure, DDIM {args.steps}", "ours": f"ours, DDIM {args.steps}",
             "fast": f"ours, {args.fast_sampler} {args.fast_steps}"}
    print(f"{'procedure':<32} {'s/lesion':>9} {'ratio':>7} {'peak GiB':>9} {'TFLOP/lesion':>13} {'TFLOP/s':>8} "
          f"{'% peak':>7}")
    base = results["original"]["seconds"] / args.lesions
    for which in ("original", "ours", "fast"):
        r = results[which]
        sec = r["seconds"] / args.lesions
        tflops = work[which] / r["seconds"] / 1e12
        pct = f"{100 * tflops / peak:.1f}" if peak else "n/a"
        print(f"{label[which]:<32} {sec:>9.3f} {base / sec:>6.2f}x {r['peak_gib']:>9.2f} "
              f"{work[which] / args.lesions / 1e12:>13.3f} {tflops:>8.3f} {pct:>7}")
    def at_200(r: dict[str, Any]) -> float:
        if args.steps == ORIGINAL_STEPS:
            return r["seconds"] / args.lesions
        return (r["once"] + ORIGINAL_STEPS * r["per_step"]) / args.lesions

    orig200, ours200 = at_200(results["original"]), at_200(results["ours"])
    how = ("measured" if args.steps == ORIGINAL_STEPS else
           f"from the measured cost per step and once-per-CT cost of {SHORT_STEPS}- and {args.steps}-step runs")
    fast = results["fast"]["seconds"] / args.lesions
    print(f"at {ORIGINAL_STEPS} DDIM steps ({how}): original {orig200:.3f} s/lesion (whole-CT VQ "
          f"{results['original']['times']['vq'] / args.lesions:.3f} s/lesion), ours {ours200:.3f} s/lesion, "
          f"{orig200 / ours200:.2f}x")
    print(f"fast sampler ({args.fast_sampler}, {args.fast_steps} steps, measured) vs the original at "
          f"{ORIGINAL_STEPS} DDIM steps: {orig200 / fast:.2f}x")
    step_tflops = _linet_step_tflops(size, args.lesions, args.device, flops["linet"])
    pct = f"{100 * step_tflops / peak:.1f} % of the {peak_what} ({peak:.1f} TFLOP/s)" if peak else "peak unknown"
    print(f"LINet step (ours, batch {args.lesions}): {step_tflops:.3f} TFLOP/s = {pct}")
    ratio = base / (results["ours"]["seconds"] / args.lesions)
    print(f"speedup vs original procedure at equal steps: {ratio:.2f}x ({name})")


if __name__ == "__main__":
    main()
