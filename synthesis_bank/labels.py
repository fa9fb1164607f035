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


def union_labels(source_label: np.ndarray, synth_label: np.ndarray, scheme: Mapping[str, int]) -> np.ndarray:
    """Source labels kept; new lesion voxels -> lesion label (never over an existing lesion); the organ label
    only where the source had background (if the scheme has an organ class)."""
    if source_label.shape != synth_label.shape:
        raise ValueError(f"source label shape {source_label.shape} != synthesized label shape {synth_label.shape}")
    out = np.asarray(source_label).copy()
    old_lesion = existing_lesions(out, scheme)
    if "organ" in scheme:
        organ = (synth_label == scheme["organ"]) & (out == scheme["background"])
        out[organ] = scheme["organ"]
    new_lesion = (synth_label == scheme["lesion"]) & ~old_lesion
    out[new_lesion] = scheme["lesion"]
    if "ignore" in scheme:  # the transition band of an ill-defined new lesion
        out[(synth_label == scheme["ignore"]) & ~old_lesion] = scheme["ignore"]
    return out


def label_dtype(scheme: Mapping[str, int]) -> type:
    return np.uint8 if max(scheme.values()) < 256 else np.int16
