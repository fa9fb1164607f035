"""Report writers by name: a table of import paths, read lazily.

The writers import ``writers.py`` for the shared base class and finishing steps; a table here (rather than
names resolved inside ``writers.py``) keeps that one-way, and keeps ``openai`` unimported until an LLM writer
is actually built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ld_augment.errors import ConfigError

REPORT_WRITERS: dict[str, str] = {
    "offline": "ld_augment.reports.offline:OfflineReportWriter",
    "llm": "ld_augment.reports.llm:LLMReportWriter",
}


def report_writer_class(name: str) -> type:
    """The writer class registered as ``name`` (imported on first use)."""
    if name not in REPORT_WRITERS:
        raise ConfigError(f"unknown report writer {name!r}; choices: {', '.join(sorted(REPORT_WRITERS))}")
    module, _, attr = REPORT_WRITERS[name].partition(":")
    return getattr(import_module(module), attr)


def create_report_writer(name: str, **options: Any) -> Any:
    """Build the report writer registered as ``name`` with keyword ``options``."""
    return report_writer_class(name)(**options)
