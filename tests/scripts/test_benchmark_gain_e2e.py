"""The issue's exact small-data invocation, end to end with real nnU-Net on a fabricated 3-case dataset (slow).

    python scripts/benchmark_gain.py --dataset D --bank BANK --ratios 0.5 --folds loo --seeds 2 --quick --out OUT

plan (quick plans) -> preprocess -> prepare the bank -> 2 arms x 3 folds x 2 seeds of training -> predict ->
evaluate -> results.csv (long, same width) and results.md, which must say there are too few cases to conclude.
A job rerun with the same seed must give the same weights, another seed other weights.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_fixtures import REPO, make_bank, make_raw_dataset, nnunet_env


def _weights(path: Path):
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=False)["network_weights"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_loo_two_seeds_end_to_end(tmp_path):
    cases = [f"case_{i:03d}" for i in range(3)]
    make_raw_dataset(tmp_path / "nnUNet_raw", 601, "GainTiny", n_train=3, shape=(24, 24, 20))
    bank = make_bank(tmp_path / "bank", cases, variants=2, shape=(24, 24, 20))
    env = nnunet_env(tmp_path)
    out = tmp_path / "OUT"
    t0 = time.time()
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_gain.py"), "--dataset", "601", "--bank", str(bank),
           "--ratios", "0.5", "--folds", "loo", "--seeds", "2", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=1700)
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 3600

    with open(out / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0][:9] == ["arm", "ratio", "n_real", "fold", "seed", "case", "lesion", "metric", "value"]
    assert {len(r) for r in table} == {len(table[0])}
    rows = [dict(zip(table[0], r)) for r in table[1:]]
    assert {(r["arm"], r["fold"], r["seed"]) for r in rows} == {
        (a, f, s) for a in ("real", "mixed_r0.50") for f in ("0", "1", "2") for s in ("0", "1")}
    # leave-one-out: each case is evaluated by the fold that held it out, and only there
    assert {(r["fold"], r["case"]) for r in rows} == {(str(i), c) for i, c in enumerate(cases)}
    assert {r["metric"] for r in rows} >= {"dice_lesion", "dice_organ", "n_ref_lesions", "fp_lesions",
                                           "detected", "diameter_mm", "patient_ref"}
    md = (out / "results.md").read_text()
    assert "Too few to conclude: 3 test case(s) (minimum 10)" in md
    assert "| mixed_r0.50 | real | dice_lesion |" in md and "significant? | verdict |" in md
    assert "| yes |" not in md                                         # nothing called significant
    assert (out / "per_size_sensitivity.png").is_file() and (out / "froc.png").is_file()
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs) == 12 and all(float(r["train_seconds"]) > 0 for r in runs)
    run = json.loads((out / "jobs" / "mixed_r0.50" / "fold1_seed1" / "run.json").read_text())
    assert run["trainer"]["seed"] == 1 and run["trainer"]["reproducible"] and run["trainer"]["num_epochs"] == 2
    rec = json.loads((Path(run["model_folder"]) / "lesiondiffusion_bank.json").read_text())
    assert rec["ratio"] == 0.5 and rec["excluded"]["validation"] == ["ld_case_001_v0", "ld_case_001_v1"]
    plans = json.loads((tmp_path / "nnUNet_preprocessed" / "Dataset601_GainTiny" / "nnUNetPlansQuick.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [3.0, 3.0, 3.0]

    # scaling out: the same preflight writes one job per line; --merge rebuilds the same report from the jobs
    md_before = md
    jobs = tmp_path / "jobs.txt"
    subprocess.run(cmd + ["--emit-jobs", str(jobs)], env=env, cwd=str(tmp_path), check=True, capture_output=True,
                   timeout=600)
    lines = jobs.read_text().splitlines()
    assert len(lines) == 12 and all(ln.split("--job ")[1].split("/")[0] in ("real", "mixed_r0.50") for ln in lines)
    subprocess.run(cmd[:2] + ["--out", str(out), "--merge"], env=env, cwd=str(tmp_path), check=True,
                   capture_output=True, timeout=600)
    assert (out / "results.md").read_text() == md_before

    # seeds: the same job again gives the same weights; the other seed gave others
    model = Path(json.loads((out / "jobs" / "real" / "fold0_seed0" / "run.json").read_text())["model_folder"])
    first = _weights(model / "checkpoint_final.pth")
    other = _weights(Path(str(model).replace("/seed0/", "/seed1/")) / "checkpoint_final.pth")
    (out / "jobs" / "real" / "fold0_seed0" / "rows.csv").unlink()
    subprocess.run(cmd[:2] + ["--out", str(out), "--job", "real/fold0/seed0"], env=env, cwd=str(tmp_path),
                   check=True, capture_output=True, timeout=600)
    again = _weights(model / "checkpoint_final.pth")
    assert all(first[k].isfinite().all() for k in first)                 # trained, not NaN
    assert all((first[k] == again[k]).all() for k in first)
    assert any((first[k] != other[k]).any() for k in first)
