"""The LIDC benchmark's request plans: the population it compares must carry LIDC's own attribute mix and sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lidc_compare.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ld_bench_lidc_compare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real(n: int, rng: np.random.Generator) -> list[dict]:
    """Rows like the LIDC loader's: ~9 % ground glass, ~10 % spiculated, a quarter poorly defined."""
    return [{"case": f"c{i}", "texture_class": "ground-glass" if rng.random() < 0.09 else "solid",
             "rating_spiculation": 4.0 if rng.random() < 0.1 else 1.0,
             "rating_margin": 2.0 if rng.random() < 0.25 else 5.0,
             "rating_lobulation": 3.0 if rng.random() < 0.25 else 1.0} for i in range(n)]


def test_population_plan_has_the_real_mix_and_sizes(bench) -> None:
    """The design plan is a third ground glass; the population must follow the real rows (and their boxes)."""
    real = _real(2000, np.random.default_rng(0))
    boxes = {r["case"]: (9, 8, 7) for r in real}
    plan = bench.matched_plan(400, real, seed=0, boxes=boxes)
    share = lambda key, value: np.mean([p[key] == value for p in plan])  # noqa: E731
    assert 0.04 <= share("texture", "ground-glass") <= 0.15 and 0.05 <= share("spiculated", True) <= 0.16
    assert 0.17 <= share("margin", "poorly defined") <= 0.33 and 0.17 <= share("shape", "irregular") <= 0.33
    assert all(p["size"] == "9x8x7" for p in plan)
    assert {p["organ"] for p in plan} == set(bench.ORGANS)  # small nodules alternate between the lobes
    large = bench.matched_plan(10, real, seed=0, boxes={r["case"]: (20, 18, 16) for r in real})
    assert {p["organ"] for p in large} == {bench.ORGANS[0]}  # large ones go to the larger lobe


def test_design_pairs_differ_only_in_one_word(bench) -> None:
    """An attribute effect is read over design pairs: two requests with one size and one seed that differ in one
    word; the words take turns, and the sizes come from small to large LIDC nodules."""
    rng = np.random.default_rng(1)
    real = [dict(r, equivalent_diameter_mm=float(d)) for r, d in zip(_real(300, rng), rng.uniform(3, 30, 300))]
    boxes = {r["case"]: (round(r["equivalent_diameter_mm"]),) * 3 for r in real}
    sizes = bench.design_sizes(real, boxes, 3, seed=0)
    edge = [int(s.split("x")[0]) for s in sizes]
    assert len(sizes) == 3 and edge == sorted(edge) and edge[0] <= 12 <= edge[2]
    assert min(int(s.split("x")[0]) for s in bench.design_sizes(real, boxes, 3, seed=0, min_diameter_mm=10)) >= 10
    plan = bench.attribute_plan(36, sizes)
    assert len(plan) == 36
    pairs: dict[int, list[dict]] = {}
    for req in plan:
        pairs.setdefault(req["pair"], []).append(req)
    assert len(pairs) == 18
    for a, b in pairs.values():
        differ = [w for w in bench.DESIGN_WORDS if a[w] != b[w]]
        assert differ == [a["varies"]] and a["size"] == b["size"] and a["seed_offset"] == b["seed_offset"]
    for word in bench.DESIGN_WORDS:  # 6 pairs per word, two at each size
        mine = [p[0] for p in pairs.values() if p[0]["varies"] == word]
        assert len(mine) == 6 and sorted(p["size"] for p in mine) == sorted(sizes * 2)
    assert len({p["seed_offset"] for p in plan}) == 18  # every pair its own draw


@pytest.mark.needs_shared
def test_lidc_boxes_span_whole_voxels(bench, shared_data: Path) -> None:
    """metadata.csv's boxes run between voxel centres; a nodule's extent is one voxel more per axis. The table's
    boxes under a voxel wide in-plane (a glitch) take their mask's extent."""
    import csv

    root = shared_data / "lesions" / "lidc_nodules"
    boxes = bench.lidc_boxes(root)
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    row = rows[0]
    case = f"{row['patient_id']}_R_{row['nodule_id']}"
    z = float(row["bboxHighZ"]) - float(row["bboxLowZ"])
    assert boxes[case][2] > round(z)  # at least one slice more than centre-to-centre
    assert len(boxes) >= 900
    glitch = [f"{r['patient_id']}_R_{r['nodule_id']}" for r in rows
              if float(r["bboxHighX"]) - float(r["bboxLowX"]) < 0.5]
    assert glitch and all(min(boxes[c][:2]) >= 2 for c in glitch if c in boxes)
