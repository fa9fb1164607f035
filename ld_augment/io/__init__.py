"""NIfTI input/output, CT standardization and geometry (the first stage of the data flow)."""
