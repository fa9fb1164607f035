"""Stage: diffusion (see DEVELOPERS.md)."""
