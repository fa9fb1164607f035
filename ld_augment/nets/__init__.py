"""Stage: nets (see DEVELOPERS.md)."""
