"""Label maps of already-labelled sources: what new lesions must avoid, and the union with the synthesized map.

Classes of the source other than background and organ count as existing lesions: nnU-Net lesion datasets
label an organ plus one or more lesion classes, and a new lesion must never overwrite an annotated one.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def existing_lesions(source_label: np.ndarray, scheme: Mapping[str, int]) -> np.ndarray:
    """Bool mask of the source's lesion voxels (any class but background and organ)."""
    keep = [scheme["background"]] + ([scheme["organ"]] if "organ" in scheme else [])
    return ~np.isin(source_label, keep)


def union_labels(source_label: np.ndarray, synth_label: np.ndarray, scheme: Mapping[str, int], *,
                 organ_from: str = "synth") -> np.ndarray:
    """Source lesions kept; new lesion voxels -> lesion label (never over an existing lesion). The organ comes
    from ONE segmentation, never a union of two boundary styles: `organ_from="source"` keeps the source's
    annotated organ, `"synth"` takes the synthesized label's organ (the segmentation the case was made with)
    in place of the source's."""
    if source_label.shape != synth_label.shape:
        raise ValueError(f"source label shape {source_label.shape} != synthesized label shape {synth_label.shape}")
    if organ_from not in ("source", "synth"):
        raise ValueError(f"organ_from must be 'source' or 'synth', got {organ_from!r}")
    out = np.asarray(source_label).copy()
    old_lesion = existing_lesions(out, scheme)
    if "organ" in scheme and organ_from == "synth":
        out[out == scheme["organ"]] = scheme["background"]
        organ = (synth_label == scheme["organ"]) & (out == scheme["background"])
        out[organ] = scheme["organ"]
    new_lesion = (synth_label == scheme["lesion"]) & ~old_lesion
    out[new_lesion] = scheme["lesion"]
    if "ignore" in scheme:  # the transition band of an ill-defined new lesion
        out[(synth_label == scheme["ignore"]) & ~old_lesion] = scheme["ignore"]
    return out


def label_dtype(scheme: Mapping[str, int]) -> type:
    return np.uint8 if max(scheme.values()) < 256 else np.int16
