"""Stage: text (see DEVELOPERS.md)."""
