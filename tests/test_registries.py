"""Registries are tables of names to import paths: every entry resolves, and no module imports another to register."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from ld_augment.reports.registry import REPORT_WRITERS, report_writer_class
from ld_augment.reports.writers import ReportWriter
from ld_augment.text.base import AttributeEncoder
from ld_augment.text.registry import ENCODERS, create_encoder, encoder_factory


@pytest.mark.parametrize("name", sorted(REPORT_WRITERS))
def test_every_report_writer_entry_resolves_to_a_writer(name: str) -> None:
    pytest.importorskip("openai") if name == "llm" else None
    assert issubclass(report_writer_class(name), ReportWriter)


def test_unknown_report_writer_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="offline"):
        report_writer_class("gpt")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_table_ids_match_the_modules(name: str) -> None:
    import importlib

    path, encoder_id = ENCODERS[name]
    module = importlib.import_module(path.partition(":")[0])
    assert module.ENCODER_ID == encoder_id
    assert encoder_factory(encoder_id) is encoder_factory(name)


def test_encoder_built_by_recorded_id() -> None:
    enc = create_encoder("ld-vocab-embedding-v1", output_dim=8)
    assert isinstance(enc, AttributeEncoder) and enc.encoder_id == "ld-vocab-embedding-v1"
    with pytest.raises(ConfigError, match="vocab"):
        create_encoder("clip")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too: that was the old circle
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("base, implementations", [
    ("ld_augment/reports/writers.py", {"ld_augment.reports.offline", "ld_augment.reports.llm"}),
    ("ld_augment/text/base.py", {"ld_augment.text.offline", "ld_augment.text.biomedclip"}),
])
def test_base_modules_do_not_import_their_implementations(base: str, implementations: set[str]) -> None:
    """The old circle: writers.py resolved offline/llm lazily and text.base imported the encoders to register
    them, while those modules import the base. Only the registry tables name the implementations."""
    root = Path(__file__).resolve().parents[1]
    assert not (_imported_modules(root / base) & implementations)
