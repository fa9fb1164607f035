"""Stage: organs (see DEVELOPERS.md).

Modules: `registry` (TotalSegmentator v1/v2 class maps, organ-name normalization, hollow/solid sets, cavity
values; pure data), `masks` (label-version detection, organ masks), `totalseg` (TotalSegmentator run in an
isolated subprocess after a weights check).
"""
