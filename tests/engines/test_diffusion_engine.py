"""Diffusion engines (LMNet mask, LINet + VQ texture) with tiny random networks saved as real checkpoint files.

Random weights draw meaningless shapes and textures, so these tests check the engine contract (shapes, cavity
rule, disjointness, seeded repeatability, a CT that changes only near the lesion, HU range, provenance,
loading errors) and the pieces with known answers (intensity round trip, threshold search, crops), not quality.
Torch runs on one thread here: on 2 shared cores a second thread makes the tiny convolutions ~10x slower.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from ld_augment.engines import LesionContext, create_mask_engine, create_texture_engine  # noqa: E402
from ld_augment.engines.diffusion import DiffusionMaskEngine, denormalize_ct, normalize_ct  # noqa: E402
from ld_augment.engines.diffusion.crops import CropWindow, fit_crop  # noqa: E402
from ld_augment.engines.diffusion.mask import organ_map_v1  # noqa: E402
from ld_augment.engines.diffusion.selection import THRESHOLDS, pick_threshold  # noqa: E402
from ld_augment.engines.diffusion.texture import latent_mask  # noqa: E402
from ld_augment.errors import CheckpointError, ConfigError, MissingDependencyError  # noqa: E402
from ld_augment.nets import LINET_TINY, LMNET_TINY, VQ_TINY, build_network, save_checkpoint  # noqa: E402
from ld_augment.organs.registry import class_map  # noqa: E402
from ld_augment.placement.bboxes import BBox  # noqa: E402
from ld_augment.reports import LesionReport  # noqa: E402
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID  # noqa: E402

LIVER = 5
SHAPE = (40, 40, 40)
MASK_OPTS = {"encoder": "vocab", "steps": 2, "crop": (16, 16, 16)}
TEX_CROP = (16, 16, 16)
REACH = 8  # texture neighbourhood: dilate 4 + blend 4 voxels (the defaults)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster and exact


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(path: Path, cfg, encoder_id: str | None, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_network(cfg)
    return save_checkpoint(path, module, cfg, encoder_id=encoder_id)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random LMNet (vocab encoder, 64-d context), LINet (skip_context) and VQ in ld-augment format."""
    root = tmp_path_factory.mktemp("diffusion_ckpts")
    return {
        "lmnet": _save(root / "lmnet.pt", LMNET_TINY, VOCAB_ID, 1),
        "lmnet_biomedclip": _save(root / "lmnet_bc.pt", LMNET_TINY, "biomedclip-pubmedbert-256", 1),
        "linet": _save(root / "linet.pt", LINET_TINY, VOCAB_ID, 2),
        "vq": _save(root / "vq.pt", VQ_TINY, None, 3),
    }


@pytest.fixture(scope="module")
def ctx() -> LesionContext:
    """An ellipsoid liver (v1 id 5, ~60 HU) in fat with noise; air and bone slabs give a realistic HU range."""
    rng = np.random.default_rng(5)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    organ = sum(((g - 20) / a) ** 2 for g, a in zip(grid, (15, 14, 13))) <= 1.0
    ct = np.where(organ, 60.0, -100.0) + rng.normal(0, 12, SHAPE)
    ct[:, :, :2], ct[:, :, -2:] = -1000.0, 900.0
    seg = organ.astype(np.int16) * LIVER
    return LesionContext(ct=ct.astype(np.float32), organ_seg=seg, organ_mask=organ, organ_name="liver",
                         spacing=(1.0, 1.0, 1.0), occupied=np.zeros(SHAPE, bool))


@pytest.fixture(scope="module")
def report() -> LesionReport:
    return LesionReport(organ_id=LIVER).with_values(shape="round-like", density="hypodense lesion",
                                                     size=(10, 10, 10))


@pytest.fixture(scope="module")
def mask_engine(ckpts) -> DiffusionMaskEngine:
    return create_mask_engine("diffusion", checkpoint=ckpts["lmnet"], **MASK_OPTS)


@pytest.fixture(scope="module")
def texture_engine(ckpts):
    return create_texture_engine("diffusion", checkpoint=ckpts["linet"], vq_checkpoint=ckpts["vq"], steps=2,
                                 crop=TEX_CROP)


BOX = BBox((20, 20, 20), (10, 10, 10))


# ----------------------------------------------------------------------------------------------- pure pieces
def test_intensity_knots_round_trip_and_saturation() -> None:
    knots = np.array([-1000.0, -200.0, 200.0, 1000.0])
    np.testing.assert_allclose(normalize_ct(knots), [0.0, 0.2, 0.8, 1.0], atol=1e-7)
    hu = np.random.default_rng(0).uniform(-1000, 1000, 1000).astype(np.float32)
    np.testing.assert_allclose(denormalize_ct(normalize_ct(hu)), hu, atol=1e-3)
    assert normalize_ct(np.array([-3000.0]))[0] == 0.0 and normalize_ct(np.array([3000.0]))[0] == 1.0
    assert denormalize_ct(np.array([-0.5, 1.5])).tolist() == [-1000.0, 1000.0]
    # soft-tissue window gets 60 % of the range: slope 0.6/400 per HU there
    assert normalize_ct(np.array([10.0]))[0] - normalize_ct(np.array([0.0]))[0] == pytest.approx(0.015, rel=1e-4)


def test_crop_window_clamps_pads_and_grows() -> None:
    w = CropWindow.for_box((0, 33, 18), (5, 40, 23), (16, 16, 16), (40, 40, 40))
    assert w.start == (0, 24, 12)  # clamped inside the volume at both borders; centre (18 + 22) // 2 = 20
    assert CropWindow.for_box((10, 10, 10), (14, 15, 16), (8, 8, 8), (40, 40, 40)).start == (7, 8, 8)  # floored
    small = CropWindow.for_box((4, 5, 5), (7, 6, 6), (16, 16, 16), (10, 40, 40))
    vol = np.arange(10 * 40 * 40, dtype=np.float32).reshape(10, 40, 40)
    crop = small.extract(vol, fill=-1)
    assert crop.shape == (16, 16, 16) and small.start[0] == -3 and (crop[:3] == -1).all()
    assert small.valid(vol.shape).sum() == 10 * 16 * 16
    assert np.array_equal(small.paste(crop, vol.shape)[small.overlap(vol.shape)[0]], vol[small.overlap(vol.shape)[0]])
    assert fit_crop((16, 16, 16), (10, 21, 33), 4) == (16, 24, 36)


def test_threshold_search_picks_the_count_closest_to_the_reference() -> None:
    grid = np.ogrid[tuple(slice(0, 31) for _ in range(3))]
    r2 = sum((g - 15.0) ** 2 for g in grid)
    soft = np.exp(-r2 / (2 * 6.0**2))
    soft[0, 0, 0] = 1.0  # an isolated bright voxel: never the largest component
    allowed = np.ones(soft.shape, bool)
    for wanted in (0.7, 0.5, 0.3):
        reference = float(((soft > wanted) & (r2 < 200)).sum())
        mask, t = pick_threshold(soft, reference, allowed)
        assert t == pytest.approx(wanted) and mask.sum() == reference and not mask[0, 0, 0]
    half = allowed.copy()
    half[:15] = False  # the search counts only what the cavity rule allows
    mask, _ = pick_threshold(soft, 1e9, half)
    assert not mask[:15].any() and mask.sum() == ((soft > THRESHOLDS[-1]) & half).sum()


def test_organ_map_converts_v2_and_binary_to_v1_ids() -> None:
    v1 = {n: i for i, n in class_map("v1").items()}
    v2 = {n: i for i, n in class_map("v2").items()}
    name = next(n for n in v2 if n in v1 and v1[n] != v2[n])
    seg = np.array([[[0, v2[name], v2["liver"]]]])
    assert organ_map_v1(seg, seg > 0, "v2", LIVER).tolist() == [[[0, v1[name], v1["liver"]]]]
    assert organ_map_v1(seg > 0, seg > 0, "binary", LIVER).tolist() == [[[0, LIVER, LIVER]]]


def test_latent_mask_is_nearest_and_keeps_thin_lesions() -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    assert np.array_equal(latent_mask(mask, 2), mask[::2, ::2, ::2])
    thin = np.zeros((8, 8, 8), bool)
    thin[3, 3, 3] = True  # odd coordinates: nearest sampling misses it
    assert latent_mask(thin, 2).sum() == 1 and latent_mask(thin, 2)[1, 1, 1]


# ----------------------------------------------------------------------------------------------- mask engine
def test_mask_inside_organ_disjoint_from_occupied_and_seeded(mask_engine, ctx, report) -> None:
    occupied = np.zeros(SHAPE, bool)
    occupied[20:, :, :] = True  # half of the box is taken by an earlier lesion
    busy = LesionContext(ct=ctx.ct, organ_seg=ctx.organ_seg, organ_mask=ctx.organ_mask, organ_name="liver",
                         spacing=ctx.spacing, occupied=occupied)
    a = mask_engine.generate_mask(busy, BOX, report, np.random.default_rng(3))
    b = mask_engine.generate_mask(busy, BOX, report, np.random.default_rng(3))
    assert a.shape == SHAPE and a.dtype == bool and a.any()
    assert not (a & ~ctx.organ_mask).any(), "within the parenchyma: the lesion stays inside the organ"
    assert not (a & occupied).any()
    assert ndimage.label(a)[1] == 1
    assert np.array_equal(a, b)
    c = mask_engine.generate_mask(busy, BOX, report, np.random.default_rng(4))
    assert not np.array_equal(a, c)


def test_mask_fails_readably_when_nothing_is_free(mask_engine, ctx, report) -> None:
    full = LesionContext(ct=ctx.ct, organ_seg=ctx.organ_seg, organ_mask=ctx.organ_mask, organ_name="liver",
                         spacing=ctx.spacing, occupied=ctx.organ_mask.copy())
    with pytest.raises(ConfigError, match=r"no usable lesion.*2 attempts.*procedural"):
        mask_engine.generate_mask(full, BOX, report, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------- texture engine
def test_texture_changes_only_near_the_lesion_in_range_and_seeded(texture_engine, ctx, report) -> None:
    lesion = np.zeros(SHAPE, bool)
    lesion[16:24, 17:23, 18:22] = True
    occupied = np.zeros(SHAPE, bool)
    occupied[24:27, 17:23, 18:22] = True  # an earlier lesion right beside this one
    busy = LesionContext(ct=ctx.ct, organ_seg=ctx.organ_seg, organ_mask=ctx.organ_mask, organ_name="liver",
                         spacing=ctx.spacing, occupied=occupied)
    out = texture_engine.render(busy, lesion, report, np.random.default_rng(1))
    again = texture_engine.render(busy, lesion, report, np.random.default_rng(1))
    assert out.shape == SHAPE and out.dtype == np.float32 and np.array_equal(out, again)
    far = ndimage.distance_transform_edt(~lesion) > REACH
    assert np.array_equal(out[far], ctx.ct[far]), "voxels away from the lesion must be bit-identical"
    assert np.array_equal(out[occupied], ctx.ct[occupied]), "earlier lesions are never overwritten"
    assert (out[lesion] != ctx.ct[lesion]).mean() > 0.9
    assert out.min() >= -1024.0 and out.max() <= 3071.0


def test_texture_grows_the_crop_for_a_large_lesion(texture_engine, ctx, report) -> None:
    lesion = ctx.organ_mask & (np.indices(SHAPE)[0] < 30)  # 24 voxels long: larger than the 16^3 crop
    out = texture_engine.render(ctx, lesion, report, np.random.default_rng(0))
    assert (out[lesion] != ctx.ct[lesion]).mean() > 0.9


def test_texture_with_text_when_skip_context_is_off(ckpts, ctx, report) -> None:
    """skip_context=False uses LINet's cross-attention as trained: the encoder must then match the checkpoint."""
    engine = create_texture_engine("diffusion", checkpoint=ckpts["linet"], vq_checkpoint=ckpts["vq"], steps=1,
                                   crop=TEX_CROP, skip_context=False, encoder="vocab")
    assert engine.provenance()["options"]["skip_context"] is False and engine.provenance()["encoder_id"] == VOCAB_ID
    lesion = np.zeros(SHAPE, bool)
    lesion[18:22, 18:22, 18:22] = True
    assert (engine.render(ctx, lesion, report, np.random.default_rng(0))[lesion] != ctx.ct[lesion]).any()
    with pytest.raises(CheckpointError, match="trained with text encoder"):
        create_texture_engine("diffusion", checkpoint=ckpts["linet"], vq_checkpoint=ckpts["vq"], skip_context=False)


# ----------------------------------------------------------------------------------------------- loading
def test_provenance_records_hashes_encoder_and_schedule(mask_engine, texture_engine, ckpts) -> None:
    p = mask_engine.provenance()
    assert p["engine"] == "diffusion" and p["steps"] == 2 and p["eta"] == 1.0
    assert p["checkpoints"]["lmnet"]["sha256"] == _sha(ckpts["lmnet"]) and p["encoder_id"] == VOCAB_ID
    t = texture_engine.provenance()
    assert t["checkpoints"]["linet"]["sha256"] == _sha(ckpts["linet"])
    assert t["checkpoints"]["vq"]["sha256"] == _sha(ckpts["vq"])
    assert t["options"]["skip_context"] is True and t["encoder_id"] is None


def test_loading_errors_are_readable(ckpts, tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        create_mask_engine("diffusion", checkpoint=missing, **MASK_OPTS)
    with pytest.raises(CheckpointError, match=r"biomedclip-pubmedbert-256.*'ld-vocab-embedding-v1'"):
        create_mask_engine("diffusion", checkpoint=ckpts["lmnet_biomedclip"], **MASK_OPTS)
    with pytest.raises(MissingDependencyError, match="encoder_weights"):
        create_mask_engine("diffusion", checkpoint=ckpts["lmnet_biomedclip"], steps=2)
    with pytest.raises(CheckpointError, match="lightning_checkpoint"):
        create_mask_engine("diffusion", encoder="vocab")
    with pytest.raises(CheckpointError, match="not the lmnet UNet|not the VQ"):
        create_mask_engine("diffusion", checkpoint=ckpts["vq"], **MASK_OPTS)
    with pytest.raises(CheckpointError, match="4 input channels"):
        create_mask_engine("diffusion", checkpoint=ckpts["linet"], **MASK_OPTS)
    with pytest.raises(CheckpointError, match="VQ-GAN"):
        create_texture_engine("diffusion", checkpoint=ckpts["linet"])
    with pytest.raises(ConfigError, match="multiple of 4"):
        create_texture_engine("diffusion", checkpoint=ckpts["linet"], vq_checkpoint=ckpts["vq"], crop=(18, 16, 16))
    with pytest.raises(ConfigError, match="steps"):
        create_mask_engine("diffusion", checkpoint=ckpts["lmnet"], encoder="vocab", steps=0)


def test_lightning_files_load_and_vq_comes_from_the_linet_file(tmp_path) -> None:
    """A Lightning-style LINet file (UNet under model., VQ under first_stage_model.) feeds the texture engine."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, vq, lmnet = build_network(LINET_TINY), build_network(VQ_TINY), build_network(LMNET_TINY)
    state = {"betas": torch.linspace(1e-4, 2e-2, 10)}
    state.update({"model." + k: v for k, v in unet.state_dict().items()})
    state.update({"first_stage_model." + k: v for k, v in vq.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "LINet.ckpt")
    torch.save({"state_dict": {"model." + k: v for k, v in lmnet.state_dict().items()}}, tmp_path / "LMNet.ckpt")
    engine = create_texture_engine("diffusion", lightning_checkpoint=tmp_path / "LINet.ckpt", config=LINET_TINY,
                                   vq_config=VQ_TINY, steps=1, crop=TEX_CROP)
    prov = engine.provenance()["checkpoints"]
    assert prov["linet"]["source"] == prov["vq"]["source"] == "lightning"
    assert prov["vq"]["sha256"] == _sha(tmp_path / "LINet.ckpt")
    assert torch.equal(engine.vq.module.quantize.embedding.weight, vq.quantize.embedding.weight)
    with pytest.raises(CheckpointError, match="BiomedCLIP"):  # the released LMNet needs the released encoder
        create_mask_engine("diffusion", lightning_checkpoint=tmp_path / "LMNet.ckpt", config=LMNET_TINY, **MASK_OPTS)


# ----------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    from ld_augment.pipeline import preprocess_case

    root = tmp_path_factory.mktemp("diffusion_case")
    rng = np.random.default_rng(2)
    shape = (44, 40, 36)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (22, 20, 18), (17, 15, 13))) <= 1.0
    body = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (22, 20, 18), (21, 19, 17))) <= 1.0
    ct = np.where(organ, 60.0, np.where(body, -80.0, -1000.0)) + rng.normal(0, 10, shape)
    ct[20:24, 2:6, 16:20] = 700.0  # a bone-like spot: HU range like a real CT
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-20.0, -30.0, 40.0)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), str(root / "ct.nii.gz"))
    nib.save(nib.Nifti1Image((organ * LIVER).astype(np.uint8), affine), str(root / "seg.nii.gz"))
    case = preprocess_case(root / "ct.nii.gz", root / "case", organ="liver", lesion_type="metastasis",
                           seg=root / "seg.nii.gz", attributes={"size": "[[10 9 8]] pixel"}, seed=3, preview=False)
    return case.case_dir


def test_synthesize_case_with_diffusion_engines(case_dir, ckpts, tmp_path) -> None:
    from ld_augment.pipeline import synthesize_case

    options = {"mask": {"checkpoint": str(ckpts["lmnet"]), **MASK_OPTS},
               "texture": {"checkpoint": str(ckpts["linet"]), "vq_checkpoint": str(ckpts["vq"]), "steps": 2,
                           "crop": TEX_CROP}}
    res = synthesize_case(case_dir, tmp_path / "out", mask_engine="diffusion", texture_engine="diffusion",
                          engine_options=options, seed=1, preview=False)
    ct_in = np.asarray(nib.load(str(case_dir.parent / "ct.nii.gz")).dataobj)
    ct_out = np.asarray(nib.load(str(res.ct_path)).dataobj)
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    assert ct_out.shape == ct_in.shape and ct_out.dtype == ct_in.dtype
    lesion = label == 2
    assert lesion.any() and (ct_out[lesion] != ct_in[lesion]).mean() > 0.5
    far = ndimage.distance_transform_edt(~lesion) > REACH + 2
    assert np.array_equal(ct_out[far], ct_in[far])
    engines = res.record["engine"]
    assert engines["mask"]["engine"] == engines["texture"]["engine"] == "diffusion"
    assert engines["mask"]["checkpoints"]["lmnet"]["sha256"] == _sha(ckpts["lmnet"])


def test_mixed_diffusion_mask_with_procedural_texture(case_dir, ckpts, tmp_path) -> None:
    from ld_augment.pipeline import synthesize_case

    res = synthesize_case(case_dir, tmp_path / "mixed", mask_engine="diffusion", texture_engine="procedural",
                          engine_options={"mask": {"checkpoint": str(ckpts["lmnet"]), **MASK_OPTS}}, seed=2,
                          preview=False)
    lesion = res.record["lesions"][0]
    assert lesion["voxels_std"] > 0 and lesion["adherence"]["fraction_inside_organ"] == 1.0
    assert res.record["engine"]["texture"]["engine"] == "procedural"
    assert res.record["engine"]["mask"]["network"] == "lmnet"
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    assert (label == 2).any()


def test_released_selection_in_the_pipeline_draws_at_most_three_lesions(tmp_path, ckpts) -> None:
    """Released mode caps a case at 3 lesions (largest boxes first) and records the boxes it did not draw."""
    from ld_augment.pipeline import preprocess_case, synthesize_case

    rng = np.random.default_rng(4)
    shape = (48, 44, 40)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (24, 22, 20), (20, 18, 16))) <= 1.0
    ct = np.where(organ, 60.0, -80.0) + rng.normal(0, 10, shape)
    ct[:2], ct[-2:] = -1000.0, 700.0  # air and bone: a plausible HU range
    nib.save(nib.Nifti1Image(ct.astype(np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image((organ * LIVER).astype(np.uint8), np.eye(4)), str(tmp_path / "seg.nii.gz"))
    case = preprocess_case(tmp_path / "ct.nii.gz", tmp_path / "case", organ="liver", lesion_type="metastasis",
                           seg=tmp_path / "seg.nii.gz", attributes={"size": "[[6 6 6]] pixel"}, num_lesions=4,
                           seed=3, preview=False)
    options = {"mask": {"checkpoint": str(ckpts["lmnet"]), "selection": "released", "min_voxels": 0, **MASK_OPTS}}
    res = synthesize_case(case.case_dir, tmp_path / "out", mask_engine="diffusion", texture_engine="procedural",
                          engine_options=options, seed=1, preview=False)
    assert len(case.meta["bboxes"]) == 4
    drawn = [les["index"] for les in res.record["lesions"]]
    skipped = res.record["skipped_lesions"]
    assert len(drawn) <= 3 and sorted(drawn + [s["index"] for s in skipped]) == [1, 2, 3, 4]
    assert any(s["reason"] == "not planned by the mask engine" for s in skipped)
    assert res.record["engine"]["mask"]["options"]["selection"]["name"] == "released"


@pytest.mark.parametrize("engines", [("diffusion", "diffusion"), ("procedural", "diffusion")])
def test_synthesize_case_batches_lesions_and_equals_one_at_a_time(tmp_path, ckpts, monkeypatch, engines) -> None:
    """A 3-lesion case: the pipeline shares LMNet and LINet calls between its lesions (max_batch 4) and writes
    what it writes one lesion per call (max_batch 1) with the same seed. The random LMNet draws masks larger
    than their boxes, so LINet windows overlap and LINet batching shows with procedural (compact) masks."""
    import ld_augment.engines.diffusion.mask as mask_module
    import ld_augment.engines.diffusion.texture as texture_module
    from ld_augment.engines.diffusion.sampling import inpaint_linet, sample_lmnet
    from ld_augment.pipeline import preprocess_case, synthesize_case

    rng = np.random.default_rng(4)
    shape = (72, 64, 56)  # room for texture windows that do not overlap (those share a LINet call)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (36, 32, 28), (33, 29, 25))) <= 1.0
    ct = np.where(organ, 60.0, -80.0) + rng.normal(0, 10, shape)
    ct[:2], ct[-2:] = -1000.0, 700.0
    nib.save(nib.Nifti1Image(ct.astype(np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image((organ * LIVER).astype(np.uint8), np.eye(4)), str(tmp_path / "seg.nii.gz"))
    case = preprocess_case(tmp_path / "ct.nii.gz", tmp_path / "case", organ="liver", lesion_type="metastasis",
                           seg=tmp_path / "seg.nii.gz", attributes={"size": "[[7 7 7]] pixel"}, num_lesions=3,
                           seed=3, preview=False)
    calls: dict[str, list[int]] = {"lmnet": [], "linet": []}

    def counting(name, fn, batched_arg):
        def wrapped(*args, **kwargs):
            calls[name].append(int(args[batched_arg].shape[0]))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(mask_module, "sample_lmnet", counting("lmnet", sample_lmnet, 1))  # (unet, cond, ...)
    monkeypatch.setattr(texture_module, "inpaint_linet", counting("linet", inpaint_linet, 2))  # (unet, vq, image)
    outputs = {}
    for max_batch in (4, 1):
        for key in calls:
            calls[key].clear()
        options = {"mask": {"checkpoint": str(ckpts["lmnet"]), "min_voxels": 0, "max_batch": max_batch,
                            **MASK_OPTS},
                   "texture": {"checkpoint": str(ckpts["linet"]), "vq_checkpoint": str(ckpts["vq"]), "steps": 2,
                               "crop": TEX_CROP, "max_batch": max_batch, "dilate_voxels": 1, "blend_voxels": 1}}
        options = {role: opts for role, opts, name in zip(("mask", "texture"), options.values(), engines)
                   if name == "diffusion"}
        res = synthesize_case(case.case_dir, tmp_path / f"out{max_batch}", mask_engine=engines[0],
                              texture_engine=engines[1], engine_options=options, seed=5, preview=False)
        outputs[max_batch] = (res, {k: list(v) for k, v in calls.items()})
    (batched, batched_calls), (alone, alone_calls) = outputs[4], outputs[1]
    assert len(batched.lesions) == 3
    if engines[0] == "diffusion":  # the first draws share one call
        assert batched_calls["lmnet"][0] == 3 and set(alone_calls["lmnet"]) == {1}
    else:  # three windows apart: one call
        assert batched_calls["linet"] == [3] and alone_calls["linet"] == [1, 1, 1]
    assert [les["voxels_std"] for les in batched.lesions] == [les["voxels_std"] for les in alone.lesions]
    label_b, label_a = (np.asarray(nib.load(str(r.label_path)).dataobj) for r in (batched, alone))
    assert np.array_equal(label_b, label_a)
    ct_b, ct_a = (np.asarray(nib.load(str(r.ct_path)).dataobj).astype(np.float32) for r in (batched, alone))
    assert np.abs(ct_b - ct_a).max() <= 1.0  # int16 HU; float reassociation in batched convolutions
    assert not np.array_equal(ct_b, ct)
