"""Procedural lung nodules against the 994 real LIDC nodules, feature by feature and attribute by attribute.

Synthesizes lung nodules (offline reports, procedural engines) on the shared CT crop's lung bases in two sets:
a *population* (``--n-population``, default 40) whose text attributes are those of LIDC nodules drawn at random
(texture solid / part-solid / ground-glass, spiculated or not, margin sharp or poorly defined: the real mix,
~88 % solid), for the medians and the classifier; and an *attribute design* (``--n``, default 54) of pairs
that differ in one word (spiculated / smooth, ground-glass / solid, poorly defined / sharp in turn), each pair
sharing one size (a LIDC nodule's box, from the size terciles of those >= 9 mm) and one seed, for the
attribute effects (cavity "within the parenchymal organ" throughout). It compares them with the LIDC
nodules on one common grid (``--spacing``, default 3 mm: the shared CT's own grid), both as VOI-like crops
(the nodule's slices, ~10 mm in-plane context, as the LIDC VOIs are) with the lung derived from HU on both
sides (the VOIs carry no lung label), measured by ``ld_augment.evaluation``. Prints:

* every feature's synthetic median against the real IQR (target: inside),
* the classifier two-sample test (cross-validated AUC, logistic regression and random forest; target <= 0.75),
* attribute effects real vs synthetic at matched size (spiculated - smooth convexity, ground-glass - solid core
  HU, poorly defined - sharp margin width; LIDC within size bands, the design over its pairs; target: the
  real sign and at least a quarter of the real size), with the raw, unmatched differences beside them,

with controls measured in the same run, which must behave or the script exits 1:

* negative control: axis-aligned box "nodules" (soft tissue, sharp edges, same places and sizes as the
  synthetic ones) must be told from real at AUC >= 0.9;
* real-vs-real control: two random halves of LIDC must be indistinguishable (AUC <= 0.65);
* shuffled-label control of the synthetic-vs-real test (~0.5);
* the box nodules placed where the design's are, carrying their words, must show no attribute effect.

``--strict`` also exits 1 when a target is missed. Deterministic given ``--seed``. A few CPU minutes
(synthesis ~10 s per nodule; LIDC loading ~30 s):

    python benchmarks/bench_lidc_compare.py [--n 54] [--n-population 40] [--spacing 3] [--seed 0] [--strict]
        [--calibrate] [--baseline-ref e21dad5] [--dump rows.json]

``--baseline-ref REV`` has the package as of git revision REV synthesize the same requests (a subprocess on a
``git archive`` of it) and prints its medians, AUC and effects beside the current ones, measured by the same code.

``--calibrate`` runs the recipe-calibration path (``ld_augment.reports.calibrated``): reports draw size, CT value,
heterogeneity and shape words from one random half of LIDC (the texture, margin and spiculation words stay
the requested ones), and the comparison uses the other half.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTURES = {
    "solid": "isodense soft tissue mass",
    "part-solid": "isodense soft tissue mass with peripheral low-density ground-glass opacity",
    "ground-glass": "low-density ground-glass opacity",
}
MARGINS = {"sharp": "well-defined margin", "poorly defined": "ill-defined margin"}
LUNG_LOBES_V2 = (10, 11, 12, 13, 14)
ORGANS = ("lung_lower_lobe_right", "lung_lower_lobe_left")  # the right lower lobe is the larger (2735 voxels)
#: Boxes (geometric-mean side, mm) at least this large go to the larger lobe: the crop's lung bases are cut by
#: the scan's top edge (~30 mm tall), and in the left lobe a 34 x 27 x 20 mm nodule shrank to 19 x 15 x 11 to
#: fit (in the right one 34 x 34 x 22 to 23 x 23 x 15); LIDC has 21 % of its nodules >= 13 mm, this scene few.
LARGE_BOX_MM = 15.0
VOI_MARGIN_MM = 10.0
#: An attribute effect counts as "in the real direction" when it has the real sign and >= this share of its size.
MIN_EFFECT_SHARE = 0.25
#: The design's words: each pair varies one of them (three pairs make one round, one size per round).
DESIGN_WORDS = ("spiculated", "texture", "margin")
#: The design's sizes come from LIDC nodules at least this large (equivalent diameter, mm): where the attributes
#: are found (77 of LIDC's 86 spiculated nodules) and where a 3 mm grid has a shape and a margin to measure
#: (drawn from all sizes >= 6 mm, the smallest design size came out at 4.7-5.4 mm: 1-3 voxels, no shape).
DESIGN_MIN_DIAMETER_MM = 9.0


def _data_dir() -> Path:
    return Path(os.environ.get("LD_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def attribute_plan(n: int, sizes: list[str] | None = None) -> list[dict]:
    """n requests as pairs that differ in one word only: spiculated / smooth, ground-glass / solid, poorly
    defined / sharp in turn (the other words cycle through the LIDC ratings' words). A pair shares one size
    (``sizes``, cycled every three pairs) and one seed: the same place and the same draws, so its difference is
    the word's own effect, not a size's or a draw's. (A full factorial block with one seed holds one
    independent shape per spiculation level however many texture and margin words it crosses it with.)"""
    out = []
    others = list(itertools.product(TEXTURES, (True, False), MARGINS))
    for p in range(n // 2):
        varies = DESIGN_WORDS[p % len(DESIGN_WORDS)]
        texture, spiculated, margin = others[(p // len(DESIGN_WORDS)) % len(others)]
        base = {"texture": texture, "spiculated": spiculated, "margin": margin,
                "organ": ORGANS[(p // len(DESIGN_WORDS)) % len(ORGANS)], "pair": p, "varies": varies,
                "seed_offset": p}
        if sizes:
            base["size"] = sizes[(p // len(DESIGN_WORDS)) % len(sizes)]
        levels = {"texture": ("ground-glass", "solid"), "spiculated": (True, False),
                  "margin": ("poorly defined", "sharp")}[varies]
        out.extend({**base, varies: level} for level in levels)
    return out


def design_sizes(real: list[dict], boxes: dict, n_sizes: int, seed: int, min_diameter_mm: float = 0.0) -> list[str]:
    """The design's sizes: the box of a LIDC nodule drawn at random from each of ``n_sizes`` equal-count
    bands of equivalent diameter (small to large) among those of at least ``min_diameter_mm`` (smaller ones have
    no shape or margin width to compare on the common grid), so the design spans the measurable real sizes."""
    rng = np.random.default_rng(seed + 104729)
    sized = sorted((r["equivalent_diameter_mm"], r["case"]) for r in real
                   if r.get("case") in boxes and r.get("equivalent_diameter_mm", math.nan) >= min_diameter_mm)
    out = []
    for part in np.array_split(np.arange(len(sized)), max(n_sizes, 1)):
        if part.size:
            out.append("x".join(str(v) for v in boxes[sized[int(rng.choice(part))][1]]))
    return out


def lidc_boxes(lidc: Path) -> dict[str, tuple[int, int, int]]:
    """Each LIDC nodule's extent (mm, x y z) from metadata.csv's bounding box, keyed like the loader's rows.

    The box runs between the outermost voxel CENTRES, so a voxel is added per axis (the VOI's own voxel size):
    without it a nodule on 2.5 mm slices came out 2.5 mm too thin in z, 40 % flatter than itself. 22 boxes are
    under a voxel wide in-plane (a glitch of the table: they asked for 2 x 2 x 12 mm nodules, which failed);
    those take their mask's extent. (Mask extents for all made the synthetic nodules 20 % larger than the
    real ones' equivalent diameters: the consensus masks reach past the table's box.)"""
    import csv

    import nibabel as nib

    out = {}
    with open(lidc / "metadata.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            case = f"{row['patient_id']}_R_{row['nodule_id']}"
            image, mask = lidc / "images" / f"{case}.nii.gz", lidc / "masks" / f"{case}.nii.gz"
            try:
                ext = [float(row[f"bboxHigh{a}"]) - float(row[f"bboxLow{a}"]) for a in "XYZ"]
                voxel = nib.affines.voxel_sizes(nib.load(str(image)).affine) if image.is_file() else (0.0,) * 3
            except (KeyError, ValueError):
                continue
            if min(ext[:2]) < float(min(voxel[:2])) and mask.is_file():  # a glitch: the mask says how large
                img = nib.load(str(mask))
                idx = np.nonzero(np.asarray(img.dataobj))
                if not idx[0].size:
                    continue
                ext = [float(np.ptp(i)) for i in idx] * np.asarray(voxel, dtype=float)
            out[case] = tuple(max(1, int(round(e + float(v)))) for e, v in zip(ext, voxel))
    return out


def matched_plan(n: int, real: list[dict], seed: int, boxes: dict | None = None) -> list[dict[str, str]]:
    """n requests whose report attributes are those of n LIDC nodules drawn at random: the texture, margin,
    spiculation and lobulation (>= 2: "irregular") ratings' words and the size (the nodule's bounding box, mm = standardized voxels). The population
    mix (~88 % solid, ~9 % ground glass, ~3 % part-solid; ~9 % spiculated; ~26 % poorly defined margins; sizes
    correlated with the ratings as in LIDC) then matches, so medians and the classifier compare like with like."""
    rng = np.random.default_rng(seed + 7919)
    out = []
    for i, k in enumerate(rng.choice(len(real), size=n, replace=len(real) < n)):
        r = real[int(k)]
        req = {"texture": r["texture_class"], "spiculated": r.get("rating_spiculation", 1.0) >= 3,
               "margin": "sharp" if r.get("rating_margin", 5.0) >= 4 else "poorly defined",
               "shape": "irregular" if r.get("rating_lobulation", 1.0) >= 2 else "round-like",
               "organ": ORGANS[i % len(ORGANS)]}
        if boxes and r.get("case") in boxes:
            req["size"] = "x".join(str(v) for v in boxes[r["case"]])
            if float(np.exp(np.mean(np.log(boxes[r["case"]])))) >= LARGE_BOX_MM:
                req["organ"] = ORGANS[0]  # the larger lobe: less shrinking to fit
        out.append(req)
    return out


def synthesize(plan: list[dict], ct: Path, seg: Path, work: Path, seed: int, writer=None) -> list[dict]:
    """Preprocess + synthesize one nodule per request; returns [{request, ct, label, error}]. With a calibrated
    ``writer`` the lesion type names the texture ("ground-glass lung nodule"), which selects its real lesions."""
    from ld_augment.pipeline import preprocess_case, synthesize_case

    out = []
    for i, req in enumerate(plan):
        attrs = {"density": TEXTURES[req["texture"]], "surface characteristics": MARGINS[req["margin"]],
                 "cavity": "within the parenchymal organ",
                 "specific features": "spiculated margins" if req["spiculated"] else ""}
        if req.get("size"):
            attrs["size"] = req["size"]
        if req.get("shape"):
            attrs["shape"] = req["shape"]
        case, res = work / f"case_{i:02d}", work / f"out_{i:02d}"
        lesion_type = f"{req['texture']} lung nodule" if writer is not None else "lung nodule"
        try:
            case_seed = seed + int(req.get("seed_offset", i))  # a design pair shares its seed
            preprocess_case(str(ct), case, organ=req["organ"], lesion_type=lesion_type, seg=str(seg),
                            attributes=attrs, seed=case_seed, preview=False, report_writer=writer,
                            shrink=True)  # a real nodule's box may not fit the crop's thin lung bases
            synthesize_case(case, res, seed=case_seed, preview=False)
            out.append({**req, "ct": res / "ct.nii.gz", "label": res / "label.nii.gz", "error": None})
        except Exception as exc:  # noqa: BLE001 - a failed nodule is counted and reported, the rest goes on
            out.append({**req, "error": f"{type(exc).__name__}: {exc}"})
        print(f"  nodule {i + 1}/{len(plan)} {req['texture']}, {'spiculated' if req['spiculated'] else 'smooth'}, "
              f"{req['margin']}: {'ok' if out[-1]['error'] is None else out[-1]['error']}", flush=True)
    return out


def generate_with_revision(ref: str, plans: dict[str, list[dict]], work: Path, seed: int) -> dict[str, list[dict]]:
    """The same requests synthesized by the package as of git revision ``ref`` (``git archive`` into a temporary
    folder, run in a subprocess), to be measured by the current code: a baseline in the same run."""
    import json

    from _revision import run_with_revision

    work.mkdir(parents=True, exist_ok=True)
    (work / "plans.json").write_text(json.dumps(plans))
    run_with_revision(ref, [sys.executable, str(Path(__file__).resolve()), "--generate-only", str(work),
                            "--seed", str(seed)])
    out = json.loads((work / "results.json").read_text())
    return {k: [{**r, "ct": Path(r["ct"]), "label": Path(r["label"])} if r.get("ct") else r for r in v]
            for k, v in out.items()}


def _generate_only(work: Path, seed: int) -> int:
    """Subprocess side of generate_with_revision: synthesize work/plans.json, write work/results.json."""
    import json

    data = _data_dir()
    ct, seg = data / "ct" / "abdomen_ct_3mm_crop.nii.gz", data / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"
    plans = json.loads((work / "plans.json").read_text())
    offsets = {"population": 1000, "design": 0}
    results = {k: synthesize(v, ct, seg, work / k, seed + offsets.get(k, 0)) for k, v in plans.items()}
    (work / "results.json").write_text(json.dumps(results, default=str))
    return 0


#: (name, feature, the design attribute it varies, synthetic group a, b, real group a, b): attribute effects a - b.
EFFECTS = [
    ("spiculated - smooth", "convexity", "spiculated",
     lambda r: r["spiculated"] is True, lambda r: r["spiculated"] is False,
     lambda r: r.get("rating_spiculation", 0) >= 3, lambda r: r.get("rating_spiculation", 0) == 1),
    ("ground-glass - solid", "core_hu", "texture",
     lambda r: r["texture"] == "ground-glass", lambda r: r["texture"] == "solid",
     lambda r: r.get("texture_class") == "ground-glass", lambda r: r.get("texture_class") == "solid"),
    ("poorly defined - sharp", "margin_width_mm", "margin",
     lambda r: r["margin"] == "poorly defined", lambda r: r["margin"] == "sharp",
     lambda r: r.get("rating_margin", 5) <= 2, lambda r: r.get("rating_margin", 0) == 5),
]


def _in_real_direction(e_syn: dict, e_real: dict) -> bool:
    """The real sign and at least MIN_EFFECT_SHARE of the real size (a -0.003 "effect" is noise, not control)."""
    return bool(math.isfinite(e_syn["effect"]) and math.isfinite(e_real["effect"])
                and np.sign(e_syn["effect"]) == np.sign(e_real["effect"])
                and abs(e_syn["effect"]) >= MIN_EFFECT_SHARE * abs(e_real["effect"]))


def summarize(syn: list[dict], design: list[dict], real: list[dict], seed: int,
              design_boxes: list[dict] | None = None) -> dict:
    """Medians inside the real IQR, the two-sample AUC and the three attribute effects of one synthetic run.

    An effect is judged at matched size on both sides: on the attribute design as the median difference over
    its pairs that differ in that word only (one size and one seed per pair) and on LIDC within size bands (its
    poorly defined and spiculated nodules are larger, and margin width and convexity change with size). The raw
    median differences (LIDC's; the population and design pooled) are kept beside them. ``design_boxes`` (the
    box control placed where the design's nodules are, carrying their words) must show no effect."""
    from ld_augment.evaluation.compare import (SCAN_FEATURES, effect, feature_table, paired_effect, stratified_effect,
                                               two_sample_auc)
    from ld_augment.evaluation.lesion_features import FEATURES

    table = feature_table(syn, real, [f for f in FEATURES if f != "inside_organ_fraction"])
    lesion_rows = [t for t in table if t["feature"] not in SCAN_FEATURES]  # the lung's own HU is the scan's
    auc = two_sample_auc(syn, real, seed=seed)
    effects = {}

    def pair(r: dict) -> int:
        return r["pair"]

    for name, feature, varies, sa, sb, ra, rb in EFFECTS:
        e_real = stratified_effect(real, feature, ra, rb)
        e_syn = paired_effect([r for r in design if r.get("varies") == varies], feature, sa, sb, pair)
        effects[name] = {"feature": feature, "real": e_real, "synthetic": e_syn,
                         "ok": _in_real_direction(e_syn, e_real), "real_raw": effect(real, feature, ra, rb),
                         "synthetic_raw": effect(syn + design, feature, sa, sb)}
        if design_boxes is not None:
            e_box = paired_effect([r for r in design_boxes if r.get("varies") == varies], feature, sa, sb, pair)
            effects[name]["control"] = {**e_box, "ok": _in_real_direction(e_box, e_real)}
    return {"table": table, "inside": sum(1 for t in lesion_rows if t["inside_real_iqr"]),
            "judged": sum(1 for t in lesion_rows if t["inside_real_iqr"] is not None), "auc": auc,
            "effects": effects, "n": len(syn)}


def voi_like(ct: np.ndarray, lesion: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Crop as LIDC's VOIs are cut: the nodule's slices, VOI_MARGIN_MM of in-plane context."""
    idx = np.nonzero(lesion)
    margin = [int(math.ceil(VOI_MARGIN_MM / float(s))) for s in spacing[:2]] + [0]
    sl = tuple(slice(max(int(i.min()) - m, 0), min(int(i.max()) + m + 1, n)) for i, m, n in zip(idx, margin, ct.shape))
    return ct[sl], lesion[sl]


def measure_volume(ct: np.ndarray, lesion: np.ndarray, spacing, base: dict) -> dict:
    from ld_augment.evaluation.lesion_features import lung_mask_from_hu, measure_lesion

    crop_ct, crop_lesion = voi_like(ct, lesion, spacing)
    organ = lung_mask_from_hu(crop_ct, crop_lesion, spacing)
    row = {**base, **measure_lesion(crop_ct, crop_lesion, organ, spacing)}
    row["inside_organ_fraction"] = math.nan  # as for LIDC: the lung is derived from HU, 1 by construction
    return row


def measure_synthetic(results: list[dict], source_ct: Path, spacing, seed: int) -> tuple[list[dict], list[dict]]:
    """Rows of the synthetic nodules and of the box negative control (same places and sizes, in the source CT)."""
    import nibabel as nib

    from ld_augment.evaluation.lesion_features import to_common_spacing

    rng = np.random.default_rng(seed)
    source, _, grid = to_common_spacing(nib.load(str(source_ct)), [], spacing)
    rows, boxes = [], []
    for res in results:
        if res["error"]:
            continue
        img, lab = nib.load(str(res["ct"])), nib.load(str(res["label"]))
        lesion_img = nib.Nifti1Image((np.asarray(lab.dataobj) == 2).astype(np.uint8), lab.affine)
        ct, (lesion,), grid = to_common_spacing(img, [lesion_img], spacing)
        if not lesion.any():
            continue
        base = {k: res[k] for k in ("texture", "spiculated", "margin", "organ", "pair", "varies") if k in res}
        rows.append(measure_volume(ct, lesion, grid, base))
        # the negative control: a soft-tissue cube of the same volume at the same centre, sharp-edged
        side = max(2, int(round(float(lesion.sum()) ** (1 / 3))))
        centre = np.round(np.argwhere(lesion).mean(0)).astype(int)
        lo = np.maximum(centre - side // 2, 0)
        box = np.zeros(lesion.shape, bool)
        box[tuple(slice(a, a + side) for a in lo)] = True
        background = source if source.shape == ct.shape else ct  # same grid: the CT before the nodule
        box_ct = np.where(box, 40.0 + rng.normal(0, 15.0, box.shape), background)
        boxes.append(measure_volume(box_ct.astype(np.float32), box, grid, {**base, "control": "box"}))
    return rows, boxes


def calibrated_writer(rows: list[dict]):
    """The item-4 path: a CalibratedReportWriter drawing from these LIDC nodules, keyed by texture class."""
    from ld_augment.reports.calibrated import CalibratedReportWriter

    lesions: dict[str, list[dict]] = {}
    for r in rows:
        lesions.setdefault(f"lung|{r['texture_class']} lung nodule", []).append({
            "diameter_mm": r["equivalent_diameter_mm"], "core_hu": r["core_hu"], "contrast_hu": r["contrast_hu"],
            "margin_width_mm": r["margin_width_mm"], "heterogeneity_ratio": r["heterogeneity_ratio"],
            "sphericity": r["sphericity"], "convexity": r["convexity"]})
    return CalibratedReportWriter(lesions, source="LIDC calibration half", ill_margin_mm=3.0, spacing=(1.0, 1.0, 1.0))


def _interval_of(auc: dict, value: float) -> str:
    """", 95 % interval lo-hi" of the model whose AUC is ``value`` (empty without intervals)."""
    for label, (lo, hi) in auc.get("interval", {}).items():
        if auc.get(label) == value:
            return f", 95 % interval {fmt(lo)}-{fmt(hi)}"
    return ""


def fmt(v, digits=2) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=54,
                        help="nodules of the attribute design: pairs differing in one word (spiculation, texture, "
                             "margin in turn), each sharing a size and a seed, sizes from the terciles of the LIDC "
                             "nodules >= 9 mm (default 54: 9 pairs per word, 3 at each size)")
    parser.add_argument("--n-population", type=int, default=40,
                        help="nodules with the attributes of LIDC nodules drawn at random (default 40): the "
                             "medians and the classifier test")
    parser.add_argument("--spacing", type=float, default=3.0, help="common isotropic spacing, mm (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-real", type=int, default=None, help="first N LIDC nodules only (default all)")
    parser.add_argument("--work", type=Path, default=None, help="keep the synthetic cases here (default: temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed, too")
    parser.add_argument("--dump", type=Path, default=None, help="write the measured rows (JSON) here")
    parser.add_argument("--baseline-ref", default=None,
                        help="git revision whose package synthesizes the same requests as a same-run baseline")
    parser.add_argument("--generate-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--calibrate", action="store_true",
                        help="reports from the calibrated writer (recipe calibrate_from): size, CT value, "
                             "heterogeneity and shape drawn from one random half of LIDC (measured at 1 mm), "
                             "compared against the other half")
    args = parser.parse_args(argv)
    if args.generate_only:
        return _generate_only(args.generate_only, args.seed)

    from ld_augment.evaluation.compare import LABEL_CONVENTION, SCAN_FEATURES, two_sample_auc
    from ld_augment.evaluation.datasets import load_lidc

    data = _data_dir()
    ct, seg = data / "ct" / "abdomen_ct_3mm_crop.nii.gz", data / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"
    lidc = data / "lesions" / "lidc_nodules"
    for path in (ct, seg, lidc / "metadata.csv"):
        if not path.exists():
            print(f"bench_lidc_compare: missing {path} (set LD_TEST_DATA)", file=sys.stderr)
            return 2
    spacing = (args.spacing,) * 3
    t0 = time.perf_counter()
    writer, held_out = None, None
    if args.calibrate:
        cal = load_lidc(lidc, (1.0, 1.0, 1.0), limit=args.max_real, negatives_per_case=0, seed=args.seed).rows
        order = np.random.default_rng(args.seed).permutation(len(cal))
        writer = calibrated_writer([cal[i] for i in order[: len(cal) // 2]])
        held_out = {cal[i]["case"] for i in order[len(cal) // 2:]}
        print(f"calibrated writer: {len(cal) // 2} LIDC nodules (1 mm); comparing against the other "
              f"{len(held_out)}: " + ", ".join(f"{k} n={v['n']}" for k, v in writer.provenance()["lesions"].items()))
    t1 = time.perf_counter()
    real = load_lidc(lidc, spacing, limit=args.max_real, negatives_per_case=0, seed=args.seed).rows
    if held_out is not None:
        real = [r for r in real if r["case"] in held_out]
    t_real = time.perf_counter() - t1
    with tempfile.TemporaryDirectory(prefix="ld_lidc_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()
        print(f"population: {args.n_population} lung nodules on {ct.name} (lung lobes of {seg.name}, "
              "TotalSegmentator v2) with the text attributes of as many LIDC nodules drawn at random")
        real_boxes = lidc_boxes(lidc)
        pop_plan = matched_plan(args.n_population, real, args.seed, real_boxes)
        design_plan = attribute_plan(args.n, design_sizes(real, real_boxes, 3, args.seed,
                                                          DESIGN_MIN_DIAMETER_MM))
        pop_results = synthesize(pop_plan, ct, seg, work / "population", args.seed + 1000, writer)
        print(f"attribute design: {args.n} lung nodules in pairs differing in one word (the effects)")
        results = synthesize(design_plan, ct, seg, work / "design", args.seed, writer)
        t_syn = time.perf_counter() - t_start
        syn, boxes = measure_synthetic(pop_results, ct, spacing, args.seed)
        design, design_boxes = measure_synthetic(results, ct, spacing, args.seed)
        baseline = None
        if args.baseline_ref:
            print(f"baseline: the same requests synthesized by {args.baseline_ref}")
            ref_results = generate_with_revision(args.baseline_ref, {"population": pop_plan,
                                                                     "design": design_plan},
                                                 work / "baseline", args.seed)
            baseline = summarize(measure_synthetic(ref_results["population"], ct, spacing, args.seed)[0],
                                 measure_synthetic(ref_results["design"], ct, spacing, args.seed)[0], real, args.seed)
    failed = sum(1 for r in pop_results if r["error"])
    print(f"\npopulation: {len(syn)} synthetic nodules measured ({failed} failed, "
          f"{args.n_population - failed - len(syn)} without a lesion in the label); design: {len(design)} of "
          f"{args.n}; {len(real)} LIDC nodules, common grid {args.spacing:g} mm; synthesis {t_syn:.0f} s, "
          f"LIDC {t_real:.0f} s\n")

    if args.dump:
        import json

        args.dump.write_text(json.dumps({"population": syn, "design": design, "real": real, "boxes": boxes},
                                        default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    now = summarize(syn, design, real, args.seed, design_boxes)
    table, auc, n_inside, n_judged = now["table"], now["auc"], now["inside"], now["judged"]
    print(f"{'feature':28s} {'synthetic median':>16s} {'real IQR':>22s} {'inside':>7s} {'W/IQR':>6s}")
    for t in table:
        inside = {True: "yes", False: "NO", None: "-"}[t["inside_real_iqr"]]
        inside = "(scan)" if t["feature"] in SCAN_FEATURES else inside
        print(f"{t['feature']:28s} {fmt(t['synthetic_median']):>16s} "
              f"{'[' + fmt(t['real_q25']) + ', ' + fmt(t['real_q75']) + ']':>22s} {inside:>7s} "
              f"{fmt(t['wasserstein_iqr']):>6s}")

    box_auc = two_sample_auc(boxes, real, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    half = rng.permutation(len(real))
    split = two_sample_auc([real[i] for i in half[: len(half) // 2]], [real[i] for i in half[len(half) // 2:]],
                           seed=args.seed)
    print("\nclassifier two-sample test (cross-validated AUC; 0.5 = indistinguishable)")
    print(f"{'':34s} {'logistic':>9s} {'forest':>7s} {'shuffled':>9s}")
    for name, res in (("synthetic vs LIDC", auc), ("CONTROL box nodules vs LIDC", box_auc),
                      ("CONTROL LIDC half vs half", split)):
        print(f"{name:34s} {fmt(res.get('logistic')):>9s} {fmt(res.get('random_forest')):>7s} "
              f"{fmt(res.get('shuffled_control')):>9s}   (n {res['n_synthetic']} vs {res['n_real']})")
    if auc.get("interval"):  # how far another draw of as many synthetic nodules could move it
        print(f"{'  95 % bootstrap interval':34s} " + "  ".join(
            f"{label} {fmt(lo)}-{fmt(hi)}" for label, (lo, hi) in auc["interval"].items()))

    # the scene: the shared crop's lung bases are denser than most of the lungs LIDC nodules sit in (partial volume
    # with the diaphragm), which contrast and core HU together reveal; LIDC nodules in lung of the same density
    # show how much of the AUC is the scene rather than the lesions (reported, not a target)
    lung = np.array([r["parenchyma_hu"] for r in syn if math.isfinite(r.get("parenchyma_hu", math.nan))])
    if lung.size:
        lo, hi = np.percentile(lung, [10, 90])
        matched = [r for r in real if lo <= r.get("parenchyma_hu", math.nan) <= hi]
        scene_auc = two_sample_auc(syn, matched, seed=args.seed)
        print(f"LIDC nodules in lung as dense as the synthetic scene's ({lo:.0f} to {hi:.0f} HU, n {len(matched)}): "
              f"logistic {fmt(scene_auc.get('logistic'))}, forest {fmt(scene_auc.get('random_forest'))} "
              "(reported, not a target)")
    # the label convention: LIDC's consensus masks are generous (a median 16 % of mask voxels below -600 HU) where
    # ours sit at the half-contrast surface (the quality gate's "label = visible extent"); without the two
    # features that read the convention, what is left is the lesion itself
    own = auc.get("without_label_convention")
    if own:
        print(f"without the label-convention features ({', '.join(LABEL_CONVENTION)}): logistic "
              f"{fmt(own.get('logistic'))}, forest {fmt(own.get('random_forest'))} (reported, not a target)")
    telling = list(auc.get("per_feature_auc", {}).items())[:5]
    print("most telling features alone (AUC; < 0.5: lower in synthetic): "
          + ", ".join(f"{k} {v:.2f}" for k, v in telling))
    # (the attribute design is not compared as a sample: it holds three sizes, a classifier reads them)

    print("\nattribute effects at matched size (a - b; real: median differences within LIDC's size bands,"
          " synthetic: median over design pairs differing in that word only; raw: unmatched medians, reported)")
    print(f"{'effect':24s} {'feature':16s} {'real':>8s} {'synthetic':>10s} {'real dir.':>10s} {'box ctrl':>9s} "
          f"{'raw real':>9s} {'raw syn':>8s}")
    for name, e in now["effects"].items():
        e_syn, e_real, ctrl = e["synthetic"], e["real"], e.get("control", {})
        print(f"{name:24s} {e['feature']:16s} {fmt(e_real['effect']):>8s} {fmt(e_syn['effect']):>10s} "
              f"{'yes' if e['ok'] else 'NO':>10s} {fmt(ctrl.get('effect')):>9s} {fmt(e['real_raw']['effect']):>9s} "
              f"{fmt(e['synthetic_raw']['effect']):>8s}   (real n {e_real['n_a']}/{e_real['n_b']} in "
              f"{e_real['n_strata']} bands, synthetic {e_syn['n_pairs']} pairs)")
    same_sign = sum(e["ok"] for e in now["effects"].values())

    if baseline is not None:
        print(f"\nbefore / after ({args.baseline_ref} / current, the same requests, the same measurement)")
        for label, run in ((args.baseline_ref, baseline), ("current", now)):
            eff = ", ".join(f"{k} {fmt(v['synthetic']['effect'])}{'' if v['ok'] else ' (NO)'}"
                            for k, v in run["effects"].items())
            print(f"  {label:9s} n {run['n']:2d}; medians in the real IQR {run['inside']}/{run['judged']}; AUC "
                  f"{fmt(run['auc'].get('logistic'))} / {fmt(run['auc'].get('random_forest'))}; effects: {eff}")
        print(f"  {'feature':28s} {'real IQR':>22s} {args.baseline_ref:>10s} {'current':>10s}")
        for tb, tn in zip(baseline["table"], now["table"]):
            print(f"  {tn['feature']:28s} {'[' + fmt(tn['real_q25']) + ', ' + fmt(tn['real_q75']) + ']':>22s} "
                  f"{fmt(tb['synthetic_median']):>10s} {fmt(tn['synthetic_median']):>10s}")

    best = max(auc.get("logistic", math.nan), auc.get("random_forest", math.nan))
    controls = {
        "box nodules detected (AUC >= 0.9)": min(box_auc.get("logistic", 0.0), box_auc.get("random_forest", 0.0)) >= 0.9,
        "LIDC halves indistinguishable (AUC <= 0.65)": max(split.get("logistic", 1.0), split.get("random_forest", 1.0)) <= 0.65,
        "shuffled control ~0.5 (0.35-0.65)": 0.35 <= auc.get("shuffled_control", 0.0) <= 0.65,
        "box nodules show no attribute effect (their words are ignored)":
            not any(e.get("control", {}).get("ok", True) for e in now["effects"].values()),
    }
    targets = {
        f"synthetic median inside real IQR ({n_inside}/{n_judged} features)": n_inside == n_judged,
        f"two-sample AUC <= 0.75 (got {fmt(best)}{_interval_of(auc, best)})": best <= 0.75,
        f"attribute effects in the real direction, >= 1/4 of the real size ({same_sign}/3)": same_sign == 3,
    }
    print("\ncontrols (the comparison itself works):")
    for k, v in controls.items():
        print(f"  {'PASS' if v else 'FAIL'}  {k}")
    print("targets (issue 18):")
    for k, v in targets.items():
        print(f"  {'met ' if v else 'MISS'}  {k}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if not all(controls.values()):
        return 1
    return 1 if args.strict and not all(targets.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
