"""The README's main job on a fresh machine: the bundled example CT -> case -> synthetic CT -> small bank.

Needs no weights and no network: the offline report writer, the user-free bundled segmentation and the
procedural engine. Everything lands under one output folder, with previews to look at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ld_augment.io.atomic import atomic_write_text
from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.resources import example_ct, example_segmentation

from synthesis_bank.builder import BuildSummary, build_bank
from synthesis_bank.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class QuickstartResult:
    case_dir: Path
    synthetic_dir: Path
    bank_dir: Path
    bank: BuildSummary


def run_quickstart(out_dir: str | Path, *, seed: int = 0, variants: int = 2, progress: bool = True) -> QuickstartResult:
    """Preprocess + synthesize the bundled CT for two liver lesions, then build a `variants`-case bank."""
    out = Path(out_dir).resolve()
    ct, seg = example_ct(), example_segmentation()
    case = preprocess_case(ct, out / "case", organ="liver", lesion_type="hepatocellular carcinoma", seg=seg,
                           attributes={"density": "hypodense lesion"}, num_lesions=2, seed=seed, shrink=True)
    synthetic = synthesize_case(case.case_dir, out / "synthetic", seed=seed)
    sources = out / "bank_sources.txt"
    atomic_write_text(sources, f"{ct},{seg}\n")
    recipe = Recipe.from_dict({
        "sources": {"list_file": str(sources)},
        "organs": ["liver"],
        "lesion_types": {"hepatocellular carcinoma": 0.5, "metastasis": 0.3, "cyst": 0.2},
        "lesions_per_case": [1, 2],
        "variants_per_source": variants,
        "seed": seed,
        "segmentation": "error",
        "dataset_name": "QuickstartBank",
        "dataset_id": 990,
    }, origin="quickstart recipe", base_dir=out)
    bank_dir = out / "Dataset990_QuickstartBank"
    summary = build_bank(recipe, bank_dir, resume=(bank_dir / "manifest.jsonl").exists(), progress=progress)
    return QuickstartResult(case.case_dir, synthetic.out_dir, bank_dir, summary)
