"""Stage: placement (see DEVELOPERS.md)."""
