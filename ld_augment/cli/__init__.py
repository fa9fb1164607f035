"""Command line: `ld-augment <job>`; parsing only, the work is done by ld_augment.pipeline functions."""
