"""Stage: engines (see DEVELOPERS.md)."""
