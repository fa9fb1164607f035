"""Parameter counts, one forward pass time and peak memory of LMNet, LINet and the VQ at the released sizes.

Each case runs in a fresh spawned process so the CPU peak RSS belongs to that network alone (CUDA: peak
allocated). Weights are random (timing does not depend on them). Examples:
    python benchmarks/bench_networks.py                       # released sizes, CPU (minutes)
    python benchmarks/bench_networks.py --size quarter        # spatial sizes / 4, quick CPU check
    python benchmarks/bench_networks.py --device cuda --precision fp32,bf16
At released size on CPU the original's figures from reference/COSTS.md are printed alongside as a baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

from _device import device_name

SCALES = {"released": 1.0, "half": 0.5, "quarter": 0.25, "eighth": 0.125}
# (network, released input shape [B, C, D1, D2, D3], divisor of each spatial size)
CASES: dict[str, tuple[str, tuple[int, ...], int]] = {
    "lmnet": ("lmnet", (1, 4, 64, 152, 152), 4),
    "linet": ("linet", (1, 5, 64, 64, 64), 4),
    "vq_encode": ("vq", (1, 1, 128, 128, 128), 2),
    "vq_decode": ("vq", (1, 4, 64, 64, 64), 1),
}
# reference/COSTS.md: the original classes, fp32, CPU, 2 threads, batch 1, after a warm-up pass
ORIGINAL_CPU = {"lmnet": (60.0, 9.0), "linet": (101.0, 4.0)}


def _shape(case: str, scale: float) -> tuple[int, ...]:
    _, shape, div = CASES[case]
    spatial = [max(div, int(round(s * scale / div)) * div) for s in shape[2:]]
    return (*shape[:2], *spatial)


def _measure(case: str, device: str, scale: float, precision: str, warmup: int, threads: int) -> dict[str, Any]:
    import torch

    from ld_augment.nets import LINET_RELEASED, LMNET_RELEASED, VQ_RELEASED, autocast_context, build_network

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = CASES[case][0]
    cfg = {"lmnet": LMNET_RELEASED, "linet": LINET_RELEASED, "vq": VQ_RELEASED}[net]
    model = build_network(cfg, device).eval()
    x = torch.randn(_shape(case, scale), device=device)
    t = torch.tensor([500], device=device)
    ctx = torch.randn(1, 6, 512, device=device)

    def run() -> Any:
        with torch.no_grad(), autocast_context(device, precision):
            if case == "vq_encode":
                return model.encode(x)
            if case == "vq_decode":
                return model.decode(x)
            return model(x, t, ctx)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        run()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = run()
    sync()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"case": case, "params": sum(p.numel() for p in model.parameters()), "input": list(x.shape),
            "output": list(out.shape), "seconds": seconds, "peak_gib": peak / 2**30, "precision": precision}


def _in_subprocess(args: tuple) -> dict[str, Any]:
    return _measure(*args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--size", default="released", choices=sorted(SCALES), help="spatial scale of the inputs")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    parser.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16 (ratios vs the first)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up passes (default 1 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)

    import torch

    warmup = args.warmup if args.warmup is not None else (1 if args.device.startswith("cuda") else 0)
    name = device_name(args.device)
    print(f"device: {args.device} ({name}); torch {torch.__version__}; threads {args.threads or torch.get_num_threads()}; "
          f"size {args.size}; warm-up {warmup}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    ctx = mp.get_context("spawn")
    print(f"{'case':<10} {'prec':<5} {'params':>12} {'input':<22} {'time s':>9} {'peak GiB':>9}  note")
    for case in cases:
        base = None
        for precision in precisions:
            with ctx.Pool(1) as pool:
                r = pool.apply(_in_subprocess, ((case, args.device, SCALES[args.size], precision, warmup, args.threads),))
            notes = []
            if base is None:
                base = r
            else:
                notes.append(f"{base['seconds'] / r['seconds']:.2f}x faster than {base['precision']}")
            orig = ORIGINAL_CPU.get(case)
            if orig and args.size == "released" and args.device == "cpu" and precision == "fp32":
                notes.append(f"original: {orig[0]:.0f} s, {orig[1]:.1f} GiB -> {orig[0] / r['seconds']:.2f}x time, "
                             f"{orig[1] / r['peak_gib']:.2f}x memory")
            shape = "x".join(map(str, r["input"]))
            print(f"{case:<10} {precision:<5} {r['params']:>12,} {shape:<22} {r['seconds']:>9.2f} "
                  f"{r['peak_gib']:>9.2f}  {'; '.join(notes)}", flush=True)
    if args.device == "cpu":
        print("peak = process max RSS (includes the ~0.3-0.5 GiB of torch itself and the random weights)")
    else:
        print("peak = torch.cuda.max_memory_allocated during the timed pass (weights included)")


if __name__ == "__main__":
    main()
