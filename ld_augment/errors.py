"""The project's error hierarchy: every message names the file or option, the problem and the valid choices."""

from __future__ import annotations


class LdAugmentError(Exception):
    """Base class of every error ld-augment raises on purpose."""


class InputError(LdAugmentError):
    """A user's file is missing, unreadable, or has bad geometry/labels/intensities."""


class ConfigError(LdAugmentError):
    """An option, recipe, report or vocabulary value is invalid."""


class CheckpointError(LdAugmentError):
    """A checkpoint or weights file is missing, of the wrong kind, or does not match the network."""


class MissingDependencyError(LdAugmentError):
    """An optional dependency or model weights are not installed; the message says how to get them."""


class ExternalServiceError(LdAugmentError):
    """An external service (LLM server, TotalSegmentator subprocess) failed after bounded retries."""
