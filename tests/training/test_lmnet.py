"""LMNet training: overfitting a fixed batch, seeded determinism, exact resume, checkpoints, fine-tuning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ld_augment.diffusion import DDPMSchedule, lmnet_loss, q_sample
from ld_augment.errors import ConfigError
from ld_augment.nets import LMNET_TINY, build_network, load_checkpoint, save_checkpoint
from ld_augment.text import AttributeEncoder, create_encoder
from ld_augment.text.biomedclip import ENCODER_ID as BIOMEDCLIP_ID
from ld_augment.training import CropDataset, find_cases, train_lmnet
from ld_augment.training.crops import collate

CROP = (8, 16, 16)
FAST = dict(config="tiny", crop_size=CROP, progress=False, lr=1e-3)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overfits_a_fixed_batch(cases_dir: Path) -> None:
    """Model + inputs + loss can learn: 40 AdamW steps on one batch with fixed t and noise cut the loss."""
    batch = collate([CropDataset(find_cases(cases_dir), "lmnet", CROP, seed=0)[i] for i in range(2)])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_network(LMNET_TINY)
        noise = torch.randn(batch["x0"].shape)
    enc = create_encoder("vocab", output_dim=LMNET_TINY.context_dim)
    context = enc.encode_attributes(batch["texts"]).detach()
    schedule, t = DDPMSchedule.create(), torch.tensor([50, 400])
    x_in = torch.cat([q_sample(batch["x0"], t, noise, schedule), batch["cond"]], dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = lmnet_loss(model(x_in, t, context), noise, batch["cond"][:, 2:3])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


def test_run_writes_loadable_checkpoint_log_and_encoder(cases_dir: Path, tmp_path: Path) -> None:
    res = train_lmnet(cases_dir, tmp_path / "out", steps=3, save_every=2, **FAST)
    module, cfg, meta = load_checkpoint(res.checkpoint, expected_encoder_id="ld-vocab-embedding-v1")
    assert cfg == LMNET_TINY and meta["encoder_id"] == res.encoder_id == "ld-vocab-embedding-v1"
    record = meta["extra"]["text_encoder"]
    rebuilt = create_encoder(record["name"], **record["options"])  # what inference does
    assert rebuilt.encoder_id == meta["encoder_id"] and rebuilt.output_dim == cfg.context_dim
    lines = [json.loads(x) for x in res.log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all(x["loss"] > 0 for x in lines)
    assert res.last_loss == lines[-1]["loss"] and res.state.is_file()
    assert meta["extra"]["training"]["crop"] == list(CROP)


def test_seeded_runs_are_identical_and_seeds_differ(cases_dir: Path, tmp_path: Path) -> None:
    a = train_lmnet(cases_dir, tmp_path / "a", steps=2, seed=5, **FAST)
    b = train_lmnet(cases_dir, tmp_path / "b", steps=2, seed=5, **FAST)
    c = train_lmnet(cases_dir, tmp_path / "c", steps=2, seed=6, **FAST)
    assert _same(_weights(a.checkpoint), _weights(b.checkpoint))
    assert a.log.read_text().split('"seconds"')[0] == b.log.read_text().split('"seconds"')[0]
    assert not _same(_weights(a.checkpoint), _weights(c.checkpoint))


def test_interrupted_run_resumes_to_the_same_weights(cases_dir: Path, tmp_path: Path) -> None:
    full = train_lmnet(cases_dir, tmp_path / "full", steps=4, save_every=2, **FAST)

    def interrupt(step: int, logs: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lmnet(cases_dir, tmp_path / "cut", steps=4, save_every=2, callback=interrupt, **FAST)
    assert not (tmp_path / "cut" / "lmnet.pt").exists()
    assert torch.load(tmp_path / "cut" / "lmnet_train_state.pt", weights_only=True)["step"] == 3
    resumed = train_lmnet(cases_dir, tmp_path / "cut", steps=4, save_every=2, **FAST)
    assert _same(_weights(full.checkpoint), _weights(resumed.checkpoint))  # EMA weights
    state_a = torch.load(full.state, weights_only=True)["model"]
    state_b = torch.load(resumed.state, weights_only=True)["model"]
    assert _same(state_a, state_b)  # raw weights too
    steps = [json.loads(x)["step"] for x in resumed.log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(cases_dir: Path, tmp_path: Path) -> None:
    train_lmnet(cases_dir, tmp_path / "o", steps=1, **FAST)
    with pytest.raises(ConfigError, match="other settings.*seed"):
        train_lmnet(cases_dir, tmp_path / "o", steps=2, seed=9, **FAST)
    res = train_lmnet(cases_dir, tmp_path / "o", steps=1, seed=9, resume=False, **FAST)  # start over
    assert len(res.log.read_text().splitlines()) == 1


def test_finetune_from_our_checkpoint_starts_from_its_weights(cases_dir: Path, tmp_path: Path) -> None:
    base = train_lmnet(cases_dir, tmp_path / "base", steps=1, **FAST)
    tuned = train_lmnet(cases_dir, tmp_path / "tune", init=base.checkpoint, steps=1, crop_size=CROP,
                        progress=False, lr=1e-12)  # config from the checkpoint
    before, after = _weights(base.checkpoint), _weights(tuned.checkpoint)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    meta = load_checkpoint(tuned.checkpoint)[2]
    assert meta["extra"]["training"]["init_origin"] == "checkpoint"


def test_finetune_needs_the_checkpoints_encoder(cases_dir: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(LMNET_TINY, context_dim=512)
    module = build_network(other)
    ckpt = save_checkpoint(tmp_path / "bmc.pt", module, other, encoder_id=BIOMEDCLIP_ID)
    with pytest.raises(ConfigError, match="biomedclip.*'ld-vocab-embedding-v1' was chosen"):
        train_lmnet(cases_dir, tmp_path / "x", init=ckpt, steps=1, crop_size=CROP, progress=False)


class _StubBiomedCLIP(AttributeEncoder):
    """Stands in for the 110M-parameter BiomedCLIP tower: same id, cheap fixed vectors."""

    encoder_id = BIOMEDCLIP_ID

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def encode_texts(self, texts):
        return torch.stack([torch.full((self.output_dim,), float(len(t)) / 50) for t in texts])


def _released_file(path: Path, cfg) -> Path:
    module = build_network(cfg)
    sd = {"model.diffusion_model." + k: v for k, v in module.state_dict().items()}
    torch.save({"state_dict": sd, "global_step": 7}, path)
    return path


def test_released_init_needs_biomedclip_and_then_trains(cases_dir: Path, tmp_path: Path) -> None:
    ckpt = _released_file(tmp_path / "LMNet.ckpt", LMNET_TINY)
    with pytest.raises(ConfigError, match="released LesionDiffusion checkpoint.*BiomedCLIP.*'ld-vocab-embedding-v1'"):
        train_lmnet(cases_dir, tmp_path / "v", init=ckpt, config="tiny", steps=1, crop_size=CROP, progress=False)
    res = train_lmnet(cases_dir, tmp_path / "b", init=ckpt, config="tiny", encoder=_StubBiomedCLIP(64), steps=1,
                      crop_size=CROP, progress=False)
    _, cfg, meta = load_checkpoint(res.checkpoint, expected_encoder_id=BIOMEDCLIP_ID)
    assert cfg == LMNET_TINY and meta["extra"]["training"]["init_origin"] == "released"
    assert meta["extra"]["layout"] == "SAL"  # the released weights learned the original loader's [S, A, L] arrays


def test_bad_crop_and_config_are_readable(cases_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiples of 2"):
        train_lmnet(cases_dir, tmp_path / "o", config="tiny", crop_size=(7, 16, 16), steps=1, progress=False)
    with pytest.raises(ConfigError, match="neither a preset"):
        train_lmnet(cases_dir, tmp_path / "o", config="huge", steps=1, progress=False)
    with pytest.raises(ConfigError, match="4 input channels"):
        train_lmnet(cases_dir, tmp_path / "o", config="linet_tiny", steps=1, progress=False)
