"""The one training loop shared by LMNet, LINet and the VQ: AdamW, EMA, atomic resumable state, JSONL log.

Why resuming is exact: every random draw of step s (the crops, timesteps and noise) comes from generators
seeded by (seed, s), never from a stream that advances across steps, and the state file holds the weights,
the EMA copy, the optimizer (and fp16 scaler) state and the step. A run interrupted after step k and resumed
therefore repeats steps k+1.. with the same inputs as an uninterrupted run and ends with the same weights.
The learning rate is constant (as the original's configs), so extending `steps` on resume is allowed too.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.io.atomic import atomic_path, atomic_write_text
from ld_augment.nets import autocast_context, resolve_device
from ld_augment.nets.precision import PRECISIONS
from ld_augment.training.crops import collate

STATE_FORMAT = "ld-augment-train/1"
log = logging.getLogger(__name__)

LossFn = Callable[[dict[str, Any], torch.Generator], tuple[torch.Tensor, dict[str, float]]]
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation and bookkeeping options common to every network (validated on construction)."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    ema_decay: float | None = 0.9999  # None or 0: no EMA, the raw weights are final
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 500
    resume: bool = True
    num_workers: int = 0
    progress: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (or None), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid: {list(PRECISIONS)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        resolve_device(self.device)

    # Options that change the result of a step; a resumed run must use the same ones.
    RESULT_KEYS = ("batch_size", "lr", "weight_decay", "ema_decay", "precision", "seed", "grad_clip")


class EMA:
    """Exponential moving average of a module's parameters, with the LDM warm-up decay min(d, (1+n)/(10+n)).

    The warm-up lets the average follow the fast early changes, so short fine-tuning runs are not dominated by
    the initial weights. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU torch generator for step `step` (timesteps, noise), independent of every other step."""
    value = int(np.random.default_rng([int(seed), int(step), 1000 + int(stream)]).integers(2**63 - 1))
    return torch.Generator().manual_seed(value)


def seeded_build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with weights from `seed`, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory()


@dataclass
class TrainPaths:
    state: Path
    log: Path
    final: Path

    @classmethod
    def for_run(cls, out_dir: str | Path, name: str) -> "TrainPaths":
        out = Path(out_dir)
        return cls(out / f"{name}_train_state.pt", out / f"{name}_log.jsonl", out / f"{name}.pt")


def _check_resumable(stored: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    keys = sorted(set(stored) | set(meta))
    diff = [k for k in keys if k not in ("steps", "init", "device", "num_workers", "progress", "save_every")
            and stored.get(k) != meta.get(k)]
    if diff:
        shown = "; ".join(f"{k}: saved {stored.get(k)!r} vs now {meta.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"{path} was written by a run with other settings ({shown}); resume with the same "
                          "settings, choose another --out, or pass resume=False (--no-resume) to start over")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after `step` (written before an interruption and about to be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def _save_state(paths: TrainPaths, step: int, model: nn.Module, ema: EMA | None, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, meta: Mapping[str, Any]) -> None:
    payload = {
        "format": STATE_FORMAT, "step": step, "model": model.state_dict(), "ema": ema.state_dict() if ema else None,
        "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "meta": json.loads(json.dumps(dict(meta))),
    }
    with atomic_path(paths.state, suffix=".tmp") as tmp:
        torch.save(payload, tmp)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"{path}: unreadable training state ({exc}); delete it or pass --no-resume") from None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an ld-augment training state ({STATE_FORMAT!r} expected)")
    return raw


def fit(name: str, model: nn.Module, loss_fn: LossFn, dataset: torch.utils.data.Dataset, opts: TrainOptions,
        out_dir: str | Path, meta: Mapping[str, Any], *, callback: StepCallback | None = None) -> nn.Module:
    """Train `model` (already on opts.device) for opts.steps steps; return the final module (EMA if kept).

    `meta` (JSON-like) describes the run: config, encoder, crop, ...; a resumed state must have been written
    with the same meta. `callback(step, logs)` runs after each step (tests use it to simulate interruptions).
    On KeyboardInterrupt the state of the last finished step is saved before re-raising.
    """
    paths = TrainPaths.for_run(out_dir, name)
    paths.state.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    meta = {**json.loads(json.dumps(dict(meta))), **{k: asdict(opts)[k] for k in TrainOptions.RESULT_KEYS}}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    ema = EMA(model, opts.ema_decay) if opts.ema_decay else None
    scaler = torch.amp.GradScaler(device.type, enabled=opts.precision == "fp16" and device.type == "cuda")
    start = 0
    if opts.resume and paths.state.is_file():
        state = _load_state(paths.state)
        _check_resumable(state["meta"], meta, paths.state)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        log.info("%s: resuming %s at step %d", name, paths.state, start)
    elif paths.log.is_file():
        paths.log.unlink()  # a fresh run: the old log describes other weights
    _truncate_log(paths.log, start)
    if start < opts.steps:
        _run(name, model, loss_fn, dataset, opts, paths, meta, opt, ema, scaler, start, callback)
    return ema.module if ema is not None else model.eval()


def _run(name: str, model: nn.Module, loss_fn: LossFn, dataset: torch.utils.data.Dataset, opts: TrainOptions,
         paths: TrainPaths, meta: Mapping[str, Any], opt: torch.optim.Optimizer, ema: EMA | None,
         scaler: torch.amp.GradScaler, start: int, callback: StepCallback | None) -> None:
    bs = opts.batch_size
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, sampler=range(start * bs, opts.steps * bs), num_workers=opts.num_workers,
        collate_fn=collate, pin_memory=resolve_device(opts.device).type == "cuda",
    )
    step, consistent = start, True
    bar = tqdm(total=opts.steps, initial=start, desc=f"train {name}", unit="step", disable=not opts.progress)
    model.train()
    try:
        with paths.log.open("a", encoding="utf-8") as log_file:
            for batch in loader:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with autocast_context(opts.device, opts.precision):
                    loss, logs = loss_fn(batch, step_generator(opts.seed, step + 1))
                if not torch.isfinite(loss):
                    raise ConfigError(f"{name}: loss became {float(loss)} at step {step + 1}; lower --lr or use "
                                      "--precision fp32")
                consistent = False  # weights change from here until the step counter catches up
                scaler.scale(loss).backward()
                if opts.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                step += 1
                consistent = True
                logs = {"loss": float(loss.detach()), **logs}
                record = {"step": step, **logs, "seconds": round(time.perf_counter() - t0, 4)}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}")
                if step % opts.save_every == 0 or step == opts.steps:
                    _save_state(paths, step, model, ema, opt, scaler, meta)
                if callback is not None:
                    callback(step, logs)
    except KeyboardInterrupt:
        if step > start and consistent:
            _save_state(paths, step, model, ema, opt, scaler, meta)
            log.warning("%s: interrupted; state of step %d saved to %s (run again to resume)", name, step, paths.state)
        raise
    finally:
        bar.close()
