"""NIfTI input/output, CT standardization and geometry (the first stage of the data flow).

Modules: `nifti` (load_ct, load_label_map, check_same_grid, sha256_file), `standardize` (SourceGeometry,
standardize_image, standardize_ct, resample_to_grid, plus the write-back helpers of `geometry`),
`geometry` (VoxelBox, source_region_for_std_box, resample_region_to_source), `preview` (PNG previews),
`atomic` (atomic writes). Nothing is imported here, so `import ld_augment.io.atomic` stays light.
"""
