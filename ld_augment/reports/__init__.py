"""Stage: reports (see DEVELOPERS.md)."""
