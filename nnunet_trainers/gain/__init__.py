"""The gain benchmark (`scripts/benchmark_gain.py`): does training with the bank beat training on real cases only?

Modules, one job each: `labels` (which labels are the lesion; checked before any training), `metrics` (per-case
and per-lesion rows from a prediction), `stats` (paired tests, hierarchical bootstrap CIs, effect sizes, the
"too few to conclude" verdict), `protocol` (arms, folds, seeds, jobs), `report` (the long CSV, results.md,
plots), `runner` (planning, preparing, training, predicting; the only module here that imports nnunetv2 at
call time) and `trainers` (the seeded short-schedule trainer nnU-Net runs).
"""
