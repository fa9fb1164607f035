"""Stage: placement (see DEVELOPERS.md). Lesion bounding boxes inside organs, following the cavity rules."""

from ld_augment.placement.bboxes import BBox, bbox_map, cavity_rule, place_lesions, wall_and_lumen

__all__ = ["BBox", "bbox_map", "cavity_rule", "place_lesions", "wall_and_lumen"]
