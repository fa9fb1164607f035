"""Loading the original Lightning checkpoints and our own format: layouts one-to-one, EMA, readable errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.nets import (
    LINET_RELEASED, LMNET_RELEASED, LMNET_TINY, VQ_RELEASED, VQ_TINY, UNet3D, VQModel3D,
    convert_lightning_checkpoint, load_checkpoint, load_lightning_checkpoint, load_lightning_state_dict,
    save_checkpoint,
)
from ld_augment.nets.checkpoints import extract_lightning_state

from ._helpers import fake_state, to_lightning

# ---------------------------------------------------------------- released layouts (meta tensors, no weights)


@pytest.mark.parametrize("use_ema", [True, False])
@pytest.mark.parametrize(("layout", "kind", "net_layout"), [
    ("lmnet_lightning_ckpt_state_dict", "lmnet", "lmnet_unet_test"),
    ("linet_lightning_ckpt_state_dict", "linet", "linet_unet_test"),
    ("vq_lightning_ckpt_state_dict", "vq", "vq_model"),
    ("linet_lightning_ckpt_state_dict", "vq", "vq_model"),  # LINet's first stage
])
def test_released_lightning_layout_loads_one_to_one(load_layout, layout, kind, net_layout, use_ema) -> None:
    sd = fake_state(load_layout(layout))
    extracted, cfg = extract_lightning_state(sd, kind, use_ema=use_ema, source=layout)
    assert cfg == {"lmnet": LMNET_RELEASED, "linet": LINET_RELEASED, "vq": VQ_RELEASED}[kind]
    net_entries = load_layout(net_layout)["entries"]
    assert list(extracted.mapping) == [k for k, _, _ in net_entries]
    assert len(set(extracted.mapping.values())) == len(extracted.mapping)  # no checkpoint key used twice
    assert set(extracted.mapping.values()) | set(extracted.ignored) == set(sd)  # every key accounted for
    expect_ema = use_ema and kind != "vq"
    assert extracted.weights == ("ema" if expect_ema else "model")
    if expect_ema:
        assert all(v.startswith("model_ema.") for v in extracted.mapping.values())
    module, _ = load_lightning_state_dict(sd, kind, use_ema=use_ema, source=layout)
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {k: s for k, s, _ in net_entries}


@pytest.mark.parametrize(("net_layout", "kind"), [("lmnet_unet_train", "lmnet"), ("linet_unet_train", "linet"),
                                                  ("vq_model", "vq")])
def test_bare_network_layout_loads(load_layout, net_layout, kind) -> None:
    extracted, _ = extract_lightning_state(fake_state(load_layout(net_layout)), kind)
    assert extracted.weights in ("bare", "model") and not extracted.ignored


# ---------------------------------------------------------------- tiny weights through a Lightning-style file


@pytest.fixture()
def tiny_lmnet(load_tiny):
    return load_tiny("lmnet_unet")


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


@pytest.mark.parametrize("prefix", ["model.", "model.diffusion_model."])
def test_ema_weights_are_preferred(tmp_path: Path, tiny_lmnet, prefix: str) -> None:
    sd = tiny_lmnet["state_dict"]
    path = tmp_path / "LMNet.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": to_lightning(sd, ema_offset=0.5, prefix=prefix)}, path)
    ema, cfg = load_lightning_checkpoint(path, "lmnet", config=LMNET_TINY)
    raw, _ = load_lightning_checkpoint(path, "lmnet", config=LMNET_TINY, use_ema=False)
    assert cfg == LMNET_TINY and isinstance(ema, UNet3D) and not ema.training
    for key, value in sd.items():
        assert torch.equal(_params(ema)[key], value + 0.5), key
        assert torch.equal(_params(raw)[key], value), key


def test_loaded_lightning_weights_reproduce_the_golden(tmp_path: Path, tiny_lmnet) -> None:
    path = tmp_path / "LMNet.ckpt"
    torch.save({"state_dict": to_lightning(tiny_lmnet["state_dict"])}, path)  # no EMA -> model.* used
    model, _ = load_lightning_checkpoint(path, "lmnet", config=LMNET_TINY, device="cpu")
    x, t, ctx = (tiny_lmnet["inputs"][k] for k in ("x", "timesteps", "context"))
    with torch.no_grad():
        assert (model(x, t, ctx) - tiny_lmnet["outputs"]["out"]).abs().max() <= 1e-5


def test_fp16_checkpoint_is_loaded_as_fp32(tiny_lmnet) -> None:
    sd = {k: v.half() for k, v in to_lightning(tiny_lmnet["state_dict"]).items()}
    model, _ = load_lightning_state_dict(sd, "lmnet", config=LMNET_TINY)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nowhere.ckpt"):
        load_lightning_checkpoint(tmp_path / "nowhere.ckpt", "lmnet")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_wrong_kind_says_which_kind_it_looks_like(tiny_lmnet) -> None:
    sd = to_lightning(tiny_lmnet["state_dict"], ema_offset=0.0)
    with pytest.raises(CheckpointError, match="no VQ weights.*kind='lmnet'"):
        load_lightning_state_dict(sd, "vq")
    with pytest.raises(CheckpointError, match="do not match the linet network.*kind='lmnet'"):
        load_lightning_state_dict(sd, "linet")  # released LINet config vs tiny LMNet weights (EMA names)
    with pytest.raises(CheckpointError, match="shape mismatch.*kind='lmnet'"):
        load_lightning_state_dict(sd, "linet", config=dataclasses.replace(LMNET_TINY, in_channels=5), use_ema=False)
    with pytest.raises(CheckpointError, match="valid kinds"):
        load_lightning_state_dict(sd, "unet")
    with pytest.raises(ConfigError, match="needs a UNetConfig"):
        load_lightning_state_dict(sd, "lmnet", config=VQ_TINY)


def test_shape_mismatch_names_key_and_both_shapes(tiny_lmnet) -> None:
    sd = dict(tiny_lmnet["state_dict"])
    sd["out.2.weight"] = torch.zeros(2, 8, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"model\.out\.2\.weight: checkpoint \[2, 8, 3, 3, 3\] vs network \[1, 8, 3, 3, 3\]"):
        load_lightning_state_dict(to_lightning(sd), "lmnet", config=LMNET_TINY)


def test_unexpected_and_missing_keys_are_listed(tiny_lmnet) -> None:
    sd = to_lightning(tiny_lmnet["state_dict"])
    with pytest.raises(CheckpointError, match="unexpected key.*model.extra.weight"):
        load_lightning_state_dict({**sd, "model.extra.weight": torch.zeros(1)}, "lmnet", config=LMNET_TINY)
    with pytest.raises(CheckpointError, match="unexpected key.*stray_buffer"):
        load_lightning_state_dict({**sd, "stray_buffer": torch.zeros(1)}, "lmnet", config=LMNET_TINY)
    del sd["model.time_embed.0.bias"]
    with pytest.raises(CheckpointError, match="1 missing key.*time_embed.0.bias"):
        load_lightning_state_dict(sd, "lmnet", config=LMNET_TINY)


def test_incomplete_ema_points_to_use_ema_false(tiny_lmnet) -> None:
    sd = to_lightning(tiny_lmnet["state_dict"], ema_offset=0.0)
    del sd["model_ema.out2weight"]
    with pytest.raises(CheckpointError, match="without an EMA copy.*out.2.weight.*use_ema=False"):
        load_lightning_state_dict(sd, "lmnet", config=LMNET_TINY)
    model, _ = load_lightning_state_dict(sd, "lmnet", config=LMNET_TINY, use_ema=False)
    assert isinstance(model, UNet3D)


def test_pickled_objects_need_explicit_permission(tmp_path: Path, tiny_lmnet) -> None:
    path = tmp_path / "with_hparams.ckpt"
    torch.save({"state_dict": to_lightning(tiny_lmnet["state_dict"]), "hparams": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects.*Namespace.*--allow-pickle"):
        load_lightning_checkpoint(path, "lmnet", config=LMNET_TINY)
    with pytest.warns(UserWarning, match="weights_only=False"):
        model, _ = load_lightning_checkpoint(path, "lmnet", config=LMNET_TINY, allow_pickle=True)
    assert isinstance(model, UNet3D)


def test_corrupt_file_is_readable_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="broken.ckpt: not a readable PyTorch checkpoint"):
        load_lightning_checkpoint(path, "vq")


def test_vq_from_a_linet_checkpoint(tmp_path: Path, load_tiny) -> None:
    vq_sd = load_tiny("vq")["state_dict"]
    linet = to_lightning(load_tiny("linet_unet")["state_dict"], ema_offset=0.0)
    linet.update({"first_stage_model." + k: v for k, v in vq_sd.items()})
    linet["cond_stage_model.model.proj.0.weight"] = torch.zeros(2, 2)  # the text tower is ignored
    src, dst = tmp_path / "LINet.ckpt", tmp_path / "vq.pt"
    torch.save({"state_dict": linet}, src)
    vq, cfg = load_lightning_checkpoint(src, "vq", config=VQ_TINY)
    assert isinstance(vq, VQModel3D) and all(torch.equal(_params(vq)[k], v) for k, v in vq_sd.items())
    convert_lightning_checkpoint(src, dst, "vq", config=VQ_TINY)
    vq2, cfg2, meta = load_checkpoint(dst, expected_encoder_id="biomedclip")  # VQ takes no text: not checked
    assert cfg2 == cfg and meta["encoder_id"] is None and meta["extra"]["prefix"] == "first_stage_model."
    assert all(torch.equal(_params(vq2)[k], v) for k, v in vq_sd.items())


# ---------------------------------------------------------------- our own format


def test_round_trip_and_encoder_id(tmp_path: Path, tiny_lmnet) -> None:
    model = UNet3D(LMNET_TINY).eval()
    model.load_state_dict(tiny_lmnet["state_dict"])
    path = save_checkpoint(tmp_path / "sub" / "lmnet.pt", model, LMNET_TINY, encoder_id="biomedclip",
                           extra={"epochs": 3})
    assert sorted(p.name for p in path.parent.iterdir()) == ["lmnet.pt"]  # atomic: no temp file left
    loaded, cfg, meta = load_checkpoint(path, expected_encoder_id="biomedclip")
    assert cfg == LMNET_TINY and meta["encoder_id"] == "biomedclip" and meta["extra"] == {"epochs": 3}
    x, t, ctx = (tiny_lmnet["inputs"][k] for k in ("x", "timesteps", "context"))
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ctx), model(x, t, ctx))
    with pytest.raises(CheckpointError, match="'biomedclip' but 'vocab' is configured"):
        load_checkpoint(path, expected_encoder_id="vocab")


def test_save_validates_its_inputs(tmp_path: Path) -> None:
    model = UNet3D(LMNET_TINY)
    with pytest.raises(ConfigError, match="encoder_id"):
        save_checkpoint(tmp_path / "a.pt", model, LMNET_TINY, encoder_id=None)
    with pytest.raises(ConfigError, match="differs"):
        save_checkpoint(tmp_path / "a.pt", model, dataclasses.replace(LMNET_TINY, dropout=0.1), encoder_id="x")
    with pytest.raises(ConfigError, match="JSON"):
        save_checkpoint(tmp_path / "a.pt", model, LMNET_TINY, encoder_id="x", extra={"bad": object()})
    assert not list(tmp_path.iterdir())


def test_convert_then_load(tmp_path: Path, tiny_lmnet) -> None:
    src, dst = tmp_path / "LMNet.ckpt", tmp_path / "lmnet.pt"
    torch.save({"state_dict": to_lightning(tiny_lmnet["state_dict"], ema_offset=1.0)}, src)
    convert_lightning_checkpoint(src, dst, "lmnet", config=LMNET_TINY)
    model, cfg, meta = load_checkpoint(dst, expected_encoder_id="biomedclip")
    assert meta["extra"]["weights"] == "ema" and meta["extra"]["kind"] == "lmnet"
    assert torch.equal(_params(model)["out.2.bias"], tiny_lmnet["state_dict"]["out.2.bias"] + 1.0)
    with pytest.raises(CheckpointError, match="load_lightning_checkpoint"):
        load_checkpoint(src)


def test_tampered_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "vq.pt", VQModel3D(VQ_TINY), VQ_TINY, encoder_id=None)
    payload = torch.load(path, weights_only=True)
    payload["config"]["n_embedz"] = 3
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid stored config.*n_embedz"):
        load_checkpoint(path)
