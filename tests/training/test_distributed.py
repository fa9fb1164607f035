"""Multi-process training through `torchrun ... --no-python ld-augment train` (gloo on CPU).

What a user relies on: N processes with per-process batch B train exactly like one process with batch N*B
(same losses and gradient norms; weights only to
float tolerance, which Adam's first steps amplify for near-zero gradients, so the losses are what is
compared), a stopped DDP run resumes bit-identically, the checkpoint states its world size
and global batch, and it plugs into `ld-augment synthesize`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ld_augment.nets import load_checkpoint
from ld_augment.training import RunOptions, VQGANOptions, train_linet, train_lmnet, train_vq

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config", "tiny", "--no-progress", "--lr", "1e-3"]
GAN = ["--perceptual-weight", "0", "--disc-start", "1", "--disc-norm", "group", "--disc-layers", "2",
       "--disc-channels", "8"]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(exe).exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    return [exe]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def torchrun_train(args: list[str], nproc: int = 2, rdzv: bool = False, timeout: int = 300
                   ) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=N --no-python ld-augment train ARGS`; --standalone picks a free port."""
    if rdzv:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        launch = ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}"]
    else:
        launch = ["--standalone"]
    cmd = _torchrun() + launch + [f"--nproc_per_node={nproc}", "--no-python", "ld-augment", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _same_losses(one: list[dict], many: list[dict], keys: tuple[str, ...], rel: float = 1e-5) -> None:
    """Step 1 within float tolerance; later steps looser, since Adam's normalised first updates turn the
    float noise of near-zero gradients into weight differences of up to ~lr."""
    assert [r["step"] for r in one] == [r["step"] for r in many]
    for a, b in zip(one, many):
        assert set(a) == set(b)
        tol = rel if a["step"] == 1 else max(rel, 1e-3)
        for k in (k for k in keys if k in a):
            assert b[k] == pytest.approx(a[k], rel=tol, abs=1e-6), (a["step"], k, a[k], b[k])


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def test_two_process_lmnet_equals_one_process_with_the_global_batch(cases_dir: Path, tmp_path: Path) -> None:
    torchrun_train(["lmnet", "--data", str(cases_dir), "--out", str(tmp_path / "ddp"), *TINY, "--steps", "3",
                    "--crop", "8x16x16", "--batch-size", "1"])
    single = train_lmnet(cases_dir, tmp_path / "one", config="tiny", steps=3, crop_size=(8, 16, 16), lr=1e-3,
                         batch_size=2, progress=False)
    many = _log(tmp_path / "ddp" / "lmnet_log.jsonl")
    _same_losses(_log(single.log), many, ("loss", "grad_norm"))
    assert all(r["world_size"] == 2 and r["global_batch"] == 2 for r in many)
    training = load_checkpoint(tmp_path / "ddp" / "lmnet.pt")[2]["extra"]["training"]
    assert training["world_size"] == 2 and training["global_batch"] == 2 and training["batch_size"] == 1


def test_shards_are_disjoint_and_tile_the_global_batch() -> None:
    from ld_augment.training.loop import _ShardSampler

    ranks = [_ShardSampler(0, 3, 2, 2, r, 2) for r in range(2)]
    got = sorted(i for s in ranks for i in s)
    assert got == list(range(3 * 2 * 2 * 2))  # every global sample index once, none twice
    assert ranks[0].indices(1, 0) == [8, 9] and ranks[1].indices(1, 0) == [10, 11]


def test_grad_accumulation_equals_the_larger_batch(cases_dir: Path, tmp_path: Path) -> None:
    """One process, 2 micro-batches of 1 accumulated == one batch of 2 (the same global sample indices)."""
    kw = dict(config="tiny", steps=2, crop_size=(8, 16, 16), lr=1e-3, progress=False)
    big = train_lmnet(cases_dir, tmp_path / "big", batch_size=2, **kw)
    acc = train_lmnet(cases_dir, tmp_path / "acc", batch_size=1, run=RunOptions(grad_accum=2), **kw)
    _same_losses(_log(big.log), _log(acc.log), ("loss", "grad_norm"))


def test_warmup_ramps_the_learning_rate(cases_dir: Path, tmp_path: Path) -> None:
    res = train_lmnet(cases_dir, tmp_path / "w", config="tiny", steps=3, crop_size=(8, 16, 16), lr=1e-3,
                      progress=False, run=RunOptions(warmup_steps=2, grad_clip=0.5))
    logs = _log(res.log)
    assert [r["lr"] for r in logs] == pytest.approx([5e-4, 1e-3, 1e-3])


@pytest.mark.slow
def test_two_process_linet_and_vqgan_equal_one_process(cases_dir: Path, tmp_path: Path) -> None:
    """LINet (its Dice is pooled over the global batch) and the VQ-GAN with the discriminators on."""
    torchrun_train(["vq", "--data", str(cases_dir), "--out", str(tmp_path / "vq2"), *TINY, "--steps", "3",
                    "--crop", "16", "--batch-size", "1", *GAN], rdzv=True)
    gan = VQGANOptions(perceptual_weight=0, disc_start=1, disc_norm="group", disc_layers=2, disc_channels=8)
    vq1 = train_vq(cases_dir, tmp_path / "vq1", config="tiny", steps=3, crop_size=(16, 16, 16), lr=1e-3,
                   batch_size=2, progress=False, gan=gan)
    _same_losses(_log(vq1.log), _log(tmp_path / "vq2" / "vq_log.jsonl"),
                 ("loss", "l1", "g_loss", "adaptive_weight", "discriminator_loss", "grad_norm"))
    torchrun_train(["linet", "--data", str(cases_dir), "--out", str(tmp_path / "li2"), "--vq", str(vq1.checkpoint),
                    *TINY, "--steps", "3", "--crop", "16", "--batch-size", "1"])
    li1 = train_linet(cases_dir, tmp_path / "li1", vq=vq1.checkpoint, config="tiny", steps=3, crop_size=(16, 16, 16),
                      lr=1e-3, batch_size=2, progress=False)
    _same_losses(_log(li1.log), _log(tmp_path / "li2" / "linet_log.jsonl"), ("loss", "l1", "dice", "grad_norm"))
    # the DDP-trained LINet + VQ drive the diffusion texture engine of `ld-augment synthesize`
    _synthesize(cases_dir, tmp_path, {"texture": {"checkpoint": str(tmp_path / "li2" / "linet.pt"),
                                                  "vq_checkpoint": str(tmp_path / "vq2" / "vq.pt"),
                                                  "encoder": "vocab", "steps": 2, "crop": [16, 16, 16]}},
                ["--mask-engine", "procedural", "--texture-engine", "diffusion"])


@pytest.mark.slow
def test_ddp_resume_is_bit_exact_and_the_checkpoint_synthesizes(cases_dir: Path, tmp_path: Path) -> None:
    args = ["lmnet", "--data", str(cases_dir), *TINY, "--crop", "8x16x16", "--batch-size", "1", "--save-every", "1"]
    torchrun_train([*args, "--out", str(tmp_path / "full"), "--steps", "4"])
    torchrun_train([*args, "--out", str(tmp_path / "cut"), "--steps", "2"])
    torchrun_train([*args, "--out", str(tmp_path / "cut"), "--steps", "4"])  # resumes at step 2
    a, b = _state(tmp_path / "full" / "lmnet.pt"), _state(tmp_path / "cut" / "lmnet.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _log(tmp_path / "cut" / "lmnet_log.jsonl")] == [1, 2, 3, 4]
    # another world size resumes with a warning and records the new global batch
    proc = torchrun_train([*args, "--out", str(tmp_path / "cut"), "--steps", "5"], nproc=1)
    assert "world_size 2, now 1" in proc.stderr
    assert load_checkpoint(tmp_path / "cut" / "lmnet.pt")[2]["extra"]["training"]["global_batch"] == 1
    _synthesize(cases_dir, tmp_path, {"mask": {"checkpoint": str(tmp_path / "full" / "lmnet.pt"),
                                               "encoder": "vocab", "steps": 2, "eta": 0.0, "crop": [16, 16, 16]}},
                ["--mask-engine", "diffusion", "--texture-engine", "procedural"])


def _synthesize(cases_dir: Path, tmp_path: Path, options: dict, engines: list[str]) -> None:
    from ld_augment.pipeline import preprocess_case

    src = cases_dir / "case_0"
    case = preprocess_case(src / "ct.nii.gz", tmp_path / "case", organ="liver", lesion_type="metastasis",
                           seg=src / "totalseg.nii.gz", attributes={"size": "[[6 6 6]] pixel"}, seed=1, preview=False)
    out = tmp_path / "synth"
    proc = subprocess.run([str(Path(sys.executable).parent / "ld-augment"), "synthesize", str(case.case_dir), "--out",
                           str(out), *engines, "--engine-options", json.dumps(options), "--no-preview",
                           "--no-progress"], capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label = np.asarray(nib.load(str(out / "label.nii.gz")).dataobj)
    assert (label == 2).any()
    shutil.rmtree(out)
    shutil.rmtree(tmp_path / "case")
