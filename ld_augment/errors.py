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


def brief(value: object, limit: int = 120) -> str:
    """A bounded repr for messages: a bad value may be huge (a YAML alias expansion, a 1e6-item list), and an
    error must stay one readable line instead of echoing (or building) all of it."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxdict, short.maxlist, short.maxtuple, short.maxset = 3, 6, 6, 6, 6
    short.maxstring, short.maxother, short.maxlong = 80, 80, 40
    text = " ".join(short.repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_os_error(exc: OSError) -> str:
    """'<path>: <reason>' (both paths for a rename), never a bare '[Errno 28]'."""
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {reason}" if where else reason
