"""benchmark_gain: protocol (folds, jobs), label checks before anything is planned, the long CSV and the report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from ld_augment.errors import InputError
from nnunet_fixtures import make_bank, make_raw_dataset
from nnunet_trainers.gain import protocol as gp
from nnunet_trainers.gain import report as gr


def test_folds_loo_cv5_all_and_existing_splits():
    cases = [f"c{i}" for i in range(3)]
    splits, names = gp.make_splits(cases, ["loo"], None)
    assert names == ["0", "1", "2"] and [s["val"] for s in splits] == [["c0"], ["c1"], ["c2"]]
    assert all(set(s["train"]) | set(s["val"]) == set(cases) and not set(s["train"]) & set(s["val"]) for s in splits)
    assert gp.make_splits(cases, ["auto"], None)[1] == ["0", "1", "2"]            # < 5 cases: loo
    assert gp.make_splits(cases, ["all"], None) == ([], ["all"])
    with pytest.raises(InputError, match="needs >= 5 training cases, the dataset has 3"):
        gp.make_splits(cases, ["cv5"], None)
    six = [f"c{i}" for i in range(6)]
    splits, names = gp.make_splits(six, ["auto"], None)
    assert names == ["0", "1", "2", "3", "4"] and sorted(v for s in splits for v in s["val"]) == six
    custom = [{"train": ["c0"], "val": ["c1"]}, {"train": ["c1"], "val": ["c0"]}]
    assert gp.make_splits(cases, ["1"], custom) == ([custom[1]], ["0"])
    with pytest.raises(InputError, match="no splits_final.json"):
        gp.make_splits(cases, ["splits"], None)


def test_arms_jobs_and_learning_curve_subsets(tmp_path):
    arms = gp.make_arms([0.25, 0.5], [1, 2])
    assert [a.name for a in arms] == ["real", "mixed_r0.25", "mixed_r0.50", "real_n1", "mixed_r0.25_n1",
                                      "mixed_r0.50_n1", "real_n2", "mixed_r0.25_n2", "mixed_r0.50_n2"]
    assert {a.baseline for a in arms if a.n_real == 2} == {"real_n2"}
    with pytest.raises(InputError, match="not in \\(0, 1\\]"):
        gp.make_arms([0.0])
    splits, folds = gp.make_splits([f"c{i}" for i in range(4)], ["loo"], None)
    subsets = gp.learning_curve_subsets(splits, folds, [1, 2])
    for f in folds:
        assert set(subsets[f"1/{f}"]) <= set(subsets[f"2/{f}"]) <= set(splits[int(f)]["train"])   # nested
    with pytest.raises(InputError, match="only 3 real training cases"):
        gp.learning_curve_subsets(splits, folds, [4])
    proto = gp.Protocol(out=str(tmp_path), dataset="Dataset1_X", bank="b", configuration="3d_fullres", plans="p",
                        trainer="t", device="cpu", lesion_name="lesion", lesion_values=[2],
                        arms=[a.__dict__ for a in gp.make_arms([0.5], [2])], folds=folds, seeds=[0, 1],
                        splits=splits, train_subsets=gp.learning_curve_subsets(splits, folds, [2]),
                        eval_source="heldout")
    jobs = proto.jobs()
    assert len(jobs) == 4 * 4 * 2 and len({j.id for j in jobs}) == len(jobs)
    job = proto.job("mixed_r0.50_n2/fold3/seed1")
    entry = proto.all_splits()[int(proto.split_index(job))]
    assert entry["val"] == splits[3]["val"] and len(entry["train"]) == 2
    assert proto.eval_cases(job) == splits[3]["val"]
    proto.save(tmp_path / "protocol.json")
    assert gp.Protocol.load(tmp_path / "protocol.json").jobs() == jobs
    line = gp.job_command(tmp_path / "s.py", tmp_path, job)
    assert line.endswith("--job mixed_r0.50_n2/fold3/seed1")


def _rows(n_cases, shift, lesions_per_case=1, seeds=(0,), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        base = rng.uniform(0.4, 0.7)
        for s in seeds:
            for arm, ratio, d in (("real", 0.0, 0.0), ("mixed_r0.50", 0.5, shift)):
                def add(lesion, metric, value):
                    rows.append({"arm": arm, "ratio": ratio, "n_real": "", "fold": str(c % 3), "seed": s,
                                 "case": f"case_{c:03d}", "lesion": lesion, "metric": metric, "value": value})
                add("", "dice_lesion", base + d + rng.normal(0, 0.005))
                add("", "dice_(1, 2, 3)", 0.9)                         # a region name with commas and parentheses
                add("", "hd95_lesion", 5.0 - 10 * d)
                add("", "fp_lesions", 0.0)
                add("", "patient_ref", 1.0)
                add("", "patient_pred", 1.0)
                for k in range(1, lesions_per_case + 1):
                    add(f"r{k}", "diameter_mm", 8.0 + 8 * k)
                    add(f"r{k}", "detected", 1.0 if arm == "mixed_r0.50" and shift > 0 else float(k % 2))
                    add(f"r{k}", "detect_score", 0.8)
                    add(f"r{k}", "lesion_dice", 0.5)
                add("p1", "diameter_mm", 12.0)
                add("p1", "tp", 1.0)
                add("p1", "score", 0.8)
    return rows


def _protocol(tmp_path, seeds=(0,)):
    return gp.Protocol(out=str(tmp_path), dataset="Dataset1_X", bank="b", configuration="3d_fullres", plans="p",
                       trainer="t", device="cpu", lesion_name="lesion", lesion_values=[2],
                       arms=[a.__dict__ for a in gp.make_arms([0.5])], folds=["0", "1", "2"], seeds=list(seeds),
                       splits=[], train_subsets={}, eval_source="heldout")


def test_long_csv_is_well_formed_for_region_names(tmp_path):
    rows = _rows(3, 0.1)
    gr.write_rows(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["arm", "ratio", "n_real", "fold", "seed", "case", "lesion", "metric", "value"]
    assert {len(r) for r in table} == {9} and len(table) == len(rows) + 1
    back = gr.read_rows(tmp_path / "r.csv")
    assert [r["metric"] for r in back if r["metric"].startswith("dice_(")][0] == "dice_(1, 2, 3)"


def test_report_concludes_with_enough_cases_and_lesions(tmp_path):
    rows = _rows(12, 0.05, lesions_per_case=2, seeds=(0, 1))
    md = gr.write_report(tmp_path, rows, _protocol(tmp_path, (0, 1)), [], n_boot=500)
    line = next(ln for ln in md.splitlines() if "| dice_lesion |" in ln)
    cells = [c.strip() for c in line.split("|")]
    assert cells[5:7] == ["12", "12"] and abs(float(cells[9]) - 0.05) < 0.005 and cells[-3] == "yes"
    assert cells[-2] == "mixed better"
    lo, hi = (float(x) for x in cells[10].strip("[]").split(","))
    assert 0.04 < lo < float(cells[9]) < hi < 0.06
    hd = next(ln for ln in md.splitlines() if "| hd95_lesion |" in ln)
    assert "mixed better" in hd                                                  # lower is better
    det = next(ln for ln in md.splitlines() if "| detected |" in ln)
    assert "| 12 | 24 |" in det and "mixed better" in det                         # 24 lesions in 12 cases
    assert "Significant (Holm-adjusted" in md and "Too few" not in md
    for png in ("per_size_sensitivity.png", "froc.png", "ratio_sweep.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert not (tmp_path / "learning_curve.png").exists()                        # no --n-real arms


def test_report_with_three_cases_says_too_few_and_prints_no_degenerate_ci(tmp_path):
    rows = _rows(3, 0.05)
    md = gr.write_report(tmp_path, rows, _protocol(tmp_path), [], n_boot=500)
    assert "Too few to conclude: 3 test case(s) (minimum 10) and 3 reference lesion(s) (minimum 20)" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| mixed_r0.50 | real |")]
    assert table and all("too few" in ln and "not assessed" in ln for ln in table)
    zero = next(ln for ln in table if "| fp_lesions |" in ln)                    # no difference at all
    assert "not reported (degenerate" in zero and "[+0.0000, +0.0000]" not in md


def test_froc_points_rank_predicted_lesions():
    rows = []
    for lesion, metric, value in (("r1", "detected", 1.0), ("r1", "detect_score", 0.9), ("r2", "detected", 0.0),
                                  ("r2", "detect_score", 0.0), ("p1", "tp", 1.0), ("p1", "score", 0.9),
                                  ("p2", "tp", 0.0), ("p2", "score", 0.5), ("", "dice_lesion", 0.3)):
        rows.append({"arm": "real", "fold": "0", "seed": 0, "case": "a", "lesion": lesion, "metric": metric,
                     "value": value})
    rows.append({"arm": "real", "fold": "0", "seed": 0, "case": "b", "lesion": "", "metric": "dice_lesion",
                 "value": math.nan})
    fp, sens = gr.froc_points(rows, "real")
    assert list(zip(fp, sens)) == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5)]            # 2 cases: 1 FP = 0.5 per case


KITS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}


def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))
    (tmp_path / "nnUNet_preprocessed").mkdir(exist_ok=True)


def test_ambiguous_lesion_label_fails_before_planning(benchmark_gain_mod, monkeypatch, tmp_path, capsys):
    _env(monkeypatch, tmp_path)
    root = make_raw_dataset(tmp_path / "nnUNet_raw", 611, "Kits", n_train=3, shape=(12, 12, 10))
    ds = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**ds, "labels": KITS, "regions_class_order": [1, 3, 2]}))
    bank = make_bank(tmp_path / "bank", ["case_000"], shape=(12, 12, 10))
    argv = ["--dataset", "611", "--bank", str(bank), "--out", str(tmp_path / "out"), "--quick", "--folds", "loo"]
    assert benchmark_gain_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "dataset.json: labels ['masses', 'tumor'] all name a lesion" in err and "kidney=[1, 2, 3]" in err
    assert "Traceback" not in err
    assert not any((tmp_path / "nnUNet_preprocessed").iterdir())                # nothing planned
    # undeclared label values are caught too, naming the file, still before planning
    (root / "dataset.json").write_text(json.dumps({**ds, "labels": {"background": 0, "organ": 1}}))
    assert benchmark_gain_mod.main(argv + ["--lesion-label", "2"]) == 2
    assert "values [2] are not lesion label values" in capsys.readouterr().err
    (root / "dataset.json").write_text(json.dumps({**ds, "labels": {"background": 0, "tumor": 1}}))
    assert benchmark_gain_mod.main(argv) == 2
    assert "label values [2] are not declared" in capsys.readouterr().err
    assert not any((tmp_path / "nnUNet_preprocessed").iterdir())


def test_merge_refuses_missing_jobs(benchmark_gain_mod, tmp_path, capsys):
    _protocol(tmp_path).save(tmp_path / "protocol.json")
    assert benchmark_gain_mod.main(["--out", str(tmp_path), "--merge"]) == 2
    assert "6 jobs have no results yet" in capsys.readouterr().err
