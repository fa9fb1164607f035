"""One function per job: `preprocess_case` and `synthesize_case` (the CLI and synthesis_bank call these)."""

from ld_augment.pipeline.case import PreprocessedCase
from ld_augment.pipeline.preprocess import preprocess_case
from ld_augment.pipeline.synthesize import DEFAULT_LABEL_SCHEME, SynthesisResult, make_engines, synthesize_case

__all__ = ["PreprocessedCase", "preprocess_case", "synthesize_case", "SynthesisResult", "DEFAULT_LABEL_SCHEME", "make_engines"]
