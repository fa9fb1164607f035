"""Stage: pipeline (see DEVELOPERS.md)."""
