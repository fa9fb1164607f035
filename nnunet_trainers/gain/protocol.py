"""The benchmark's design as data: arms, folds, seeds and the jobs (one arm x fold x seed each).

Arms: `real` (real cases only) and `mixed_r<ratio>` for each ratio; with `--n-real 2,4` also the same pair
trained on only that many real cases per fold (`real_n2`, `mixed_r0.50_n2`: the learning curve). Every arm
trains the same trainer (`nnUNetTrainerLDBench`) with the same schedule; the real-only arm at bank ratio 0.

Folds: `loo` (leave one case out), `cv5` (nnU-Net's seeded 5-fold split, >= 5 cases), `all` (train on every
case; needs imagesTs), `splits` (the dataset's own nnU-Net splits_final.json), or fold numbers of that file.
`auto` = `cv5` from 5 cases on, else `loo`. The protocol writes its own split file (OUT/splits.json) that
the trainer reads, so the dataset's preprocessed folder is never modified.

Evaluation cases: imagesTs/labelsTs when the dataset has them (every fold's model predicts all of them), else
each fold's held-out cases (cross-validated; `all` is then refused).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ld_augment.errors import InputError

FORMAT = "ld-augment-gain-protocol/1"


@dataclass(frozen=True)
class Arm:
    name: str
    ratio: float
    n_real: int | None = None         # None: every real training case of the fold

    @property
    def baseline(self) -> str:
        return "real" if self.n_real is None else f"real_n{self.n_real}"


def make_arms(ratios: Sequence[float], n_real: Sequence[int] = ()) -> list[Arm]:
    for r in ratios:
        if not 0 < r <= 1:
            raise InputError(f"--ratios: {r} is not in (0, 1]; the real-only arm is always included")
    arms = [Arm("real", 0.0)] + [Arm(f"mixed_r{r:.2f}", float(r)) for r in ratios]
    for n in n_real:
        if n < 1:
            raise InputError(f"--n-real: {n} is not a positive number of real training cases")
        arms += [Arm(f"real_n{n}", 0.0, n)] + [Arm(f"mixed_r{r:.2f}_n{n}", float(r), n) for r in ratios]
    return arms


def make_splits(cases: Sequence[str], folds: Sequence[str], existing: list[dict] | None) -> tuple[list[dict], list[str]]:
    """([{"train", "val"}, ...], fold names). Fold names index the splits; "all" stays nnU-Net's own fold."""
    cases = sorted(cases)
    spec = list(folds) or ["auto"]
    if spec == ["auto"]:
        spec = ["cv5"] if len(cases) >= 5 else ["loo"]
    if spec == ["all"]:
        return [], ["all"]
    if spec == ["loo"]:
        if len(cases) < 2:
            raise InputError(f"--folds loo needs at least 2 training cases, the dataset has {len(cases)}")
        return [{"train": [c for c in cases if c != v], "val": [v]} for v in cases], [str(i) for i in range(len(cases))]
    if spec == ["cv5"]:
        if len(cases) < 5:
            raise InputError(f"--folds cv5 (nnU-Net's 5-fold split) needs >= 5 training cases, the dataset has "
                             f"{len(cases)}; use --folds loo or all")
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        splits = generate_crossval_split(cases, seed=12345, n_splits=5)
        return [{"train": list(s["train"]), "val": list(s["val"])} for s in splits], [str(i) for i in range(5)]
    if existing is None:
        raise InputError(f"--folds {' '.join(spec)}: the dataset has no splits_final.json in its preprocessed "
                         f"folder; use loo, cv5 or all")
    idx = list(range(len(existing))) if spec == ["splits"] else [int(f) for f in spec]
    bad = [i for i in idx if not 0 <= i < len(existing)]
    if bad:
        raise InputError(f"--folds {bad}: splits_final.json has {len(existing)} folds")
    return [existing[i] for i in idx], [str(i) for i in range(len(idx))]


@dataclass(frozen=True)
class Job:
    arm: Arm
    fold: str            # index into the protocol's splits, or "all"
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arm.name}/fold{self.fold}/seed{self.seed}"


@dataclass
class Protocol:
    """Everything a job needs, written to OUT/protocol.json by the preflight and read by each job."""
    out: str
    dataset: str                     # nnU-Net dataset name (DatasetXXX_Name)
    bank: str
    configuration: str
    plans: str
    trainer: str
    device: str
    lesion_name: str
    lesion_values: list[int]
    arms: list[dict]
    folds: list[str]
    seeds: list[int]
    splits: list[dict]               # the split per fold index (also OUT/splits.json)
    train_subsets: dict              # "<n_real>/<fold>" -> the real training cases of that arm and fold
    eval_source: str                 # "imagesTs" or "heldout"
    schedule: dict = field(default_factory=dict)   # epochs, iterations, val_iterations (None = nnU-Net's)
    quick: bool = False
    format: str = FORMAT

    def arm_list(self) -> list[Arm]:
        return [Arm(**a) for a in self.arms]

    def jobs(self) -> list[Job]:
        return [Job(arm, fold, seed) for arm in self.arm_list() for fold in self.folds for seed in self.seeds]

    def job(self, job_id: str) -> Job:
        for j in self.jobs():
            if j.id == job_id:
                return j
        raise InputError(f"{Path(self.out) / 'protocol.json'}: no job {job_id!r}")

    def split_index(self, job: Job) -> str:
        """The fold nnU-Net trains: index into the job split file (subsets are appended after the folds)."""
        if job.fold == "all" or job.arm.n_real is None:
            return job.fold
        return str(len(self.folds) + list(self.train_subsets).index(f"{job.arm.n_real}/{job.fold}"))

    def all_splits(self) -> list[dict]:
        """The folds, then one entry per learning-curve subset (train = the subset, val = the fold's val)."""
        extra = []
        for key, train in self.train_subsets.items():
            fold = key.split("/")[1]
            extra.append({"train": train, "val": self.splits[int(fold)]["val"]})
        return list(self.splits) + extra

    def eval_cases(self, job: Job) -> list[str] | None:
        """Held-out cases of the job's fold, or None for the test set."""
        return None if self.eval_source == "imagesTs" else list(self.splits[int(job.fold)]["val"])

    def save(self, path: Path) -> None:
        from ld_augment.io.atomic import atomic_write_json

        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Protocol":
        if not path.is_file():
            raise InputError(f"{path}: missing; run benchmark_gain.py without --job/--merge first (the preflight "
                             f"writes it)")
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise InputError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
        return cls(**doc)


def learning_curve_subsets(splits: list[dict], folds: list[str], n_real: Sequence[int], seed: int = 0) -> dict:
    """For each n and fold: n real training cases drawn (seeded, nested: the n=2 cases are among n=4's)."""
    import numpy as np

    out = {}
    for fold in folds:
        if fold == "all":
            if n_real:
                raise InputError("--n-real needs cross-validation folds (loo, cv5, splits), not --folds all")
            continue
        train = sorted(splits[int(fold)]["train"])
        order = [train[i] for i in np.random.default_rng(seed + int(fold)).permutation(len(train))]
        for n in n_real:
            if n > len(train):
                raise InputError(f"--n-real {n}: fold {fold} has only {len(train)} real training cases")
            out[f"{n}/{fold}"] = sorted(order[:n])
    return out


def job_command(script: Path, out: Path, job: Job, python: str = "python") -> str:
    """One line of the job list: runnable by a SLURM array (`sed -n ${SLURM_ARRAY_TASK_ID}p`) or torchrun."""
    import shlex

    return shlex.join([python, str(script), "--out", str(out), "--job", job.id])
