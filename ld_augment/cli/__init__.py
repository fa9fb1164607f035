"""Stage: cli (see DEVELOPERS.md)."""
