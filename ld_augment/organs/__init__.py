"""Stage: organs (see DEVELOPERS.md)."""
