"""The engines feed each network crops in the layout it was trained in (released: [S, A, L]), crop sizes in
network order, and checkpoints written before layouts were recorded keep loading with the layout they had."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ld_augment.engines import LesionContext, create_mask_engine, create_texture_engine
from ld_augment.errors import ConfigError
from ld_augment.io.network_layout import layout
from ld_augment.nets import LINET_TINY, LMNET_TINY, VQ_TINY, build_network, save_checkpoint
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import LesionReport
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID

SHAPE = (40, 36, 32)  # non-cubic: an axis mix-up changes shapes
OPTS = {"encoder": "vocab", "steps": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster and exact


def _lmnet(path, extra=None):
    torch.manual_seed(0)
    return save_checkpoint(path, build_network(LMNET_TINY), LMNET_TINY, encoder_id=VOCAB_ID, extra=extra)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("layout")


@pytest.fixture(scope="module")
def ctx() -> LesionContext:
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (17, 19, 15), (12, 11, 10))) <= 1.0
    ct = np.where(organ, 60.0, -100.0).astype(np.float32) + np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    return LesionContext(ct=ct, organ_seg=organ.astype(np.int16) * 5, organ_mask=organ, organ_name="liver",
                         spacing=(1.0, 1.0, 1.0), occupied=np.zeros(SHAPE, bool))


def _first_input(engine, call) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = engine.net.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        call()
    except ConfigError:
        pass  # a random network may draw nothing usable; only what it was fed matters here
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("codes", ["SAL", "RAS", "LPS"])
def test_mask_engine_feeds_the_box_in_network_order(ckpt_dir, ctx, codes) -> None:
    engine = create_mask_engine("diffusion", checkpoint=_lmnet(ckpt_dir / "l.pt"), crop=(8, 16, 24),
                                network_layout=codes, **OPTS)
    assert engine.provenance()["options"]["network_layout"] == codes
    box = BBox((14, 20, 15), (4, 8, 6))
    report = LesionReport(organ_id=5).with_values(shape="round-like", size=(4, 8, 6))
    x = _first_input(engine, lambda: engine.generate_mask(ctx, box, report, np.random.default_rng(0)))
    assert tuple(x.shape[2:]) == (8, 16, 24)  # the crop is given in network order
    grid_box = np.zeros(SHAPE, bool)
    grid_box[box.slices(SHAPE)] = True
    net_box = layout(codes).to_network(grid_box)
    idx = np.argwhere(x[0, 3].numpy() > 0)
    assert (idx.max(0) - idx.min(0) + 1).tolist() == list(layout(codes).network_shape((4, 8, 6)))
    assert x[0, 3].sum().item() == net_box.sum()
    organ = layout(codes).to_network(ctx.organ_mask)  # the organ channel is the same volume in that layout
    assert x[0, 2].sum().item() <= organ.sum() and x[0, 2].sum().item() > 0


@pytest.mark.parametrize("codes", ["SAL", "RAS", "LPS", "PIR"])
def test_mask_comes_back_on_our_grid(ckpt_dir, ctx, monkeypatch, codes) -> None:
    """A network that answers with its box channel draws exactly the box back on our grid, whatever the layout
    (a wrong inverse, or a window centred differently in and out, would move or cut it)."""
    import ld_augment.engines.diffusion.mask as mask_module

    monkeypatch.setattr(mask_module, "sample_lmnet", lambda unet, cond, context, **kw: cond[:, 2:3].clone())
    engine = create_mask_engine("diffusion", checkpoint=_lmnet(ckpt_dir / "l.pt"), crop=(8, 16, 16),
                                network_layout=codes, selection="released", **OPTS)
    box = BBox((10, 12, 20), (6, 8, 10))  # 480 voxels: accepted (> 400)
    report = LesionReport(organ_id=5).with_values(shape="round-like", size=(6, 8, 10))
    lesion = engine.generate_mask(ctx, box, report, np.random.default_rng(0))
    expected = np.zeros(SHAPE, bool)
    expected[box.slices(SHAPE)] = True
    assert lesion.shape == SHAPE and lesion.flags["C_CONTIGUOUS"]
    assert np.array_equal(lesion, expected)


def test_released_files_default_to_sal(tmp_path) -> None:
    torch.manual_seed(0)
    unet, vq = build_network(LINET_TINY), build_network(VQ_TINY)
    state = {"model." + k: v for k, v in unet.state_dict().items()}
    state.update({"first_stage_model." + k: v for k, v in vq.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "LINet.ckpt")
    engine = create_texture_engine("diffusion", lightning_checkpoint=tmp_path / "LINet.ckpt", config=LINET_TINY,
                                   vq_config=VQ_TINY, steps=1, crop=(16, 16, 16))
    assert engine.provenance()["options"]["network_layout"] == "SAL"
    with pytest.raises(ConfigError, match="axis codes"):
        create_texture_engine("diffusion", lightning_checkpoint=tmp_path / "LINet.ckpt", config=LINET_TINY,
                              vq_config=VQ_TINY, steps=1, crop=(16, 16, 16), network_layout="XYZ")


@pytest.mark.parametrize("old, expected", [({"orientation": "LPS"}, "LPS"), ({"orientation": "RAS"}, "RAS"),
                                           ({}, "RAS"), ({"layout": "SAL"}, "SAL")])
def test_checkpoints_written_before_layouts_keep_loading(ckpt_dir, ctx, old, expected) -> None:
    """A checkpoint of the previous `ld-augment train` recorded `orientation` (RAS, or LPS = axes 0 and 1
    mirrored): it loads with exactly that layout, for inference and for fine-tuning."""
    from ld_augment.training.setup import load_init, training_layout

    path = _lmnet(ckpt_dir / f"old_{expected}_{len(old)}.pt", extra={"kind": "lmnet", **old})
    engine = create_mask_engine("diffusion", checkpoint=path, crop=(16, 16, 16), **OPTS)
    assert engine.provenance()["options"]["network_layout"] == expected
    assert engine.provenance()["checkpoints"]["lmnet"]["layout"] == expected
    assert training_layout(load_init("lmnet", path, None)) == expected


def test_a_converted_released_file_keeps_its_layout_and_released_defaults(tmp_path) -> None:
    from ld_augment.nets import convert_lightning_checkpoint

    torch.manual_seed(0)
    lmnet = build_network(LMNET_TINY)
    torch.save({"state_dict": {"model." + k: v for k, v in lmnet.state_dict().items()}}, tmp_path / "LMNet.ckpt")
    dst = convert_lightning_checkpoint(tmp_path / "LMNet.ckpt", tmp_path / "lmnet.pt", "lmnet", VOCAB_ID,
                                       config=LMNET_TINY)
    options = create_mask_engine("diffusion", checkpoint=dst, crop=(16, 16, 16), **OPTS).provenance()["options"]
    assert options["network_layout"] == "SAL"
    assert options["selection"]["name"] == "released" and options["cavity_text"] == "released"
    ours = create_mask_engine("diffusion", checkpoint=_lmnet(tmp_path / "ours.pt"), crop=(16, 16, 16), **OPTS)
    assert ours.provenance()["options"]["selection"]["name"] == "constrained"
    assert ours.provenance()["options"]["cavity_text"] == "report"
