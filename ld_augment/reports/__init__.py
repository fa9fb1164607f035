"""Stage: reports -- the type.json report model, vocabulary normalization, conditioning text, report writers.

The LLM writer is imported lazily (``ld_augment.reports.llm``) so that this package does not need the
``openai`` client unless it is used.
"""

from ld_augment.reports.conditioning import PURPOSES, conditioning_attributes, conditioning_texts
from ld_augment.reports.model import (
    ATTRIBUTE_ORDER, LesionReport, load_reports, reports_from_type_json, reports_to_type_json, save_reports,
)
from ld_augment.reports.offline import OfflineReportWriter
from ld_augment.reports.registry import REPORT_WRITERS, create_report_writer, report_writer_class
from ld_augment.reports.vocabulary import Vocabulary, canonical_attribute, load_vocabulary, normalize_report
from ld_augment.reports.writers import ReportWriter, normalize_overrides

__all__ = [
    "ATTRIBUTE_ORDER", "LesionReport", "load_reports", "save_reports", "reports_from_type_json",
    "reports_to_type_json", "Vocabulary", "load_vocabulary", "normalize_report", "canonical_attribute",
    "conditioning_texts", "conditioning_attributes", "PURPOSES", "ReportWriter", "OfflineReportWriter",
    "LLMReportWriter", "normalize_overrides", "REPORT_WRITERS", "create_report_writer", "report_writer_class",
]



def __getattr__(name: str):
    if name == "LLMReportWriter":  # lazily: the LLM writer needs the ``openai`` client
        return report_writer_class("llm")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
