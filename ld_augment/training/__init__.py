"""Stage: training (see DEVELOPERS.md)."""
