"""The LLM report writer: an OpenAI-compatible chat server fills the report under a JSON schema.

The original asked a chat model for free text shaped like JSON and used whatever came back. Here the
answer is constrained by a strict JSON schema whose enums are the vocabulary, then validated again (servers
differ in how strictly they honour schemas): a malformed or invalid answer is retried and finally reported as
an ``ExternalServiceError``, never half-used. Any OpenAI-compatible server works (OpenAI, a local vLLM or
Ollama): base URL, model and key come from the arguments or OPENAI_BASE_URL / LD_LLM_MODEL / OPENAI_API_KEY,
read when a report is written. The key is never logged or put in an error message.

Every request ends within ``timeout_s`` of wall clock (a slow-dripping server included; see http_deadline) and
reads at most 64 KB. An answer outside physical bounds (a size that is not a whole positive number, larger
than the organ's box or than any lesion of its type, a CT value outside the HU range) or with keys the schema
does not have is refused and retried like malformed JSON, never clamped into something usable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from ld_augment.errors import ConfigError, ExternalServiceError, MissingDependencyError, brief
from ld_augment.reports._organs import cavities_for
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, DENSITY_VARIATIONS, ENHANCEMENT, RELATIONSHIP, SHAPE, SPECIFIC_FEATURES, SURFACE,
    LesionReport,
)
from ld_augment.reports.http_deadline import MAX_RESPONSE_BYTES, deadline_client, too_large
from ld_augment.reports.offline import SIZE_JITTER
from ld_augment.reports.priors import profile_for
from ld_augment.reports.vocabulary import MULTI_VALUED, load_vocabulary
from ld_augment.reports.writers import ReportWriter, check_request, clamp_size, finalize_report, normalize_overrides

log = logging.getLogger(__name__)

# JSON property name (what the model sees) -> report attribute.
_FIELDS = {
    "enhancement_status": ENHANCEMENT, "shape": SHAPE, "density": DENSITY, "density_variations": DENSITY_VARIATIONS,
    "surface_characteristics": SURFACE, "relationship_with_adjacent_organs": RELATIONSHIP,
    "specific_features": SPECIFIC_FEATURES, "cavity": CAVITY,
}
_HU_RANGE = (-1024.0, 3071.0)
#: A lesion's bounding box side may reach this multiple of its type's largest clinical diameter (priors.py), so
#: an elongated lesion fits while a 10 m "lesion" is refused.
MAX_SIZE_OVER_CLINICAL = 2.0
_PLACEHOLDER_KEY = "EMPTY"  # local vLLM/Ollama servers accept any key; the openai client insists on one


class _InvalidAnswer(ValueError):
    """The server answered, but not with a usable report (retried)."""


def report_schema(cavities: tuple[str, ...]) -> dict[str, Any]:
    """The strict JSON schema of an answer; enums list the canonical vocabulary values."""
    vocab = load_vocabulary()
    props: dict[str, Any] = {}
    for prop, attribute in _FIELDS.items():
        allowed = list(cavities) if attribute == CAVITY else vocab.allowed(attribute)
        enum = {"type": "string", "enum": allowed}
        props[prop] = {"type": "array", "items": enum} if attribute in MULTI_VALUED else enum
    props["size"] = {"type": "array", "items": {"type": "integer"},
                     "description": "lesion bounding box [X, Y, Z] in voxels"}
    props["ct_value"] = {"type": "number", "description": "mean lesion density in HU"}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def parse_answer(content: str | None, cavities: tuple[str, ...], *, extent: tuple[int, int, int] | None = None,
                 lesion_type: str | None = None) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Typed report values and the lesion size from the model's JSON text; any problem is ``_InvalidAnswer``.

    With `extent` (the organ's box, voxels of 1 mm) and `lesion_type`, the size must fit both: not larger than
    the organ on any axis, nor than MAX_SIZE_OVER_CLINICAL x the type's largest clinical diameter.
    """
    if not content or not content.strip():
        raise _InvalidAnswer("empty answer")
    if len(content) > MAX_RESPONSE_BYTES:
        raise _InvalidAnswer(f"answer of {len(content) // 1024} KB; a report is at most {MAX_RESPONSE_BYTES // 1024} KB")
    text = content.strip()
    if text.startswith("```"):  # some servers wrap JSON in a code fence despite the schema
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _InvalidAnswer(f"answer is not JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(data, dict):
        raise _InvalidAnswer("answer is not a JSON object")
    expected = (*_FIELDS, "size", "ct_value")
    missing = [k for k in expected if k not in data]
    if missing:
        raise _InvalidAnswer(f"answer lacks {', '.join(missing)}")
    extra = sorted(str(k) for k in data if k not in expected)
    if extra:
        raise _InvalidAnswer(f"answer has keys the schema does not allow: {brief(extra)}")
    vocab = load_vocabulary()
    values: dict[str, Any] = {}
    try:
        for prop, attribute in _FIELDS.items():
            raw = data[prop]
            if attribute in MULTI_VALUED:
                if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                    raise _InvalidAnswer(f"{prop} must be a list of strings")
                items = vocab.normalize_items(attribute, raw)
                if attribute == SHAPE and not items:
                    raise _InvalidAnswer("shape is empty")
                values[attribute] = items if attribute == SPECIFIC_FEATURES else ",".join(items)
            else:
                if not isinstance(raw, str):
                    raise _InvalidAnswer(f"{prop} must be a string")
                values[attribute] = vocab.canonical(attribute, raw)
    except ConfigError as err:  # a value outside the vocabulary
        raise _InvalidAnswer(str(err)) from None
    if values[CAVITY] not in cavities:
        raise _InvalidAnswer(f"cavity {values[CAVITY]!r} is not one of {list(cavities)}")
    ct = data["ct_value"]
    if isinstance(ct, bool) or not isinstance(ct, (int, float)) or not _HU_RANGE[0] <= ct <= _HU_RANGE[1]:
        raise _InvalidAnswer(f"ct_value must be a number of HU in {_HU_RANGE}, got {brief(ct)}")
    values[CT_VALUE] = float(ct)
    return values, _checked_size(data["size"], extent, lesion_type)


def _checked_size(size: Any, extent: tuple[int, int, int] | None, lesion_type: str | None) -> tuple[int, int, int]:
    """Three whole positive numbers within the organ's box and the lesion type's clinical range."""
    if (not isinstance(size, list) or len(size) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in size)
            or not all(v >= 1 and v == round(v) for v in size)):
        raise _InvalidAnswer(f"size must be three positive integers, got {brief(size)}")
    out = tuple(int(v) for v in size)
    if extent is not None and any(v > e for v, e in zip(out, extent)):
        raise _InvalidAnswer(f"size {list(out)} is larger than the organ's box {list(extent)} (voxels of 1 mm)")
    if lesion_type is not None:
        prior = profile_for(lesion_type).size
        bound = MAX_SIZE_OVER_CLINICAL * prior.high_mm
        if max(out) > bound:
            raise _InvalidAnswer(f"size {list(out)} mm: a {lesion_type} reaches about {prior.high_mm:g} mm; "
                                 f"at most {bound:g} mm per side is accepted")
    return out  # type: ignore[return-value]


class LLMReportWriter(ReportWriter):
    """Report writer backed by an OpenAI-compatible chat-completions server.

    ``max_retries`` bounds the extra attempts after a timeout, connection error, 429/5xx or invalid answer;
    waits grow as ``backoff_s * 2**i``. ``sleep`` is injectable so tests do not wait. The openai client's own
    retries are off and every attempt ends within ``timeout_s`` of wall clock however slowly the server sends
    (``http_deadline.deadline_client``), so ``timeout_s`` x (max_retries + 1) plus the backoff waits bounds a
    report. An injected ``http_client`` (tests) replaces that client and its deadline.
    An unreachable server or a refused request raises an ExternalServiceError with ``systemic = True``: every
    later report would fail the same way, so a batch (the bank builder) stops instead of retrying per case.
    """

    name = "llm"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 1.0, http_client: Any = None,
                 temperature: float = 0.7, sleep: Callable[[float], None] = time.sleep) -> None:
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ConfigError("LLM writer: max_retries and backoff_s must be >= 0 and timeout_s > 0")
        self.base_url, self.model, self._api_key = base_url, model, api_key
        self.timeout_s, self.max_retries, self.backoff_s = float(timeout_s), int(max_retries), float(backoff_s)
        self.http_client, self.temperature, self._sleep = http_client, float(temperature), sleep

    def __repr__(self) -> str:  # never shows the key
        return f"LLMReportWriter(base_url={self.base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ configuration, read at call time
    def _settings(self) -> tuple[str | None, str, str]:
        base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or None
        model = self.model or os.environ.get("LD_LLM_MODEL")
        if not model:
            raise ConfigError("LLM report writer: no model; pass model=... or set LD_LLM_MODEL (e.g. 'gpt-4o-mini')")
        key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ConfigError("LLM report writer: no API key; set OPENAI_API_KEY or pass base_url= for a "
                                  "local OpenAI-compatible server (vLLM, Ollama)")
            key = _PLACEHOLDER_KEY
        return base_url, model, key

    def _client(self, base_url: str | None, key: str, http_client: Any) -> Any:
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("the LLM report writer needs the openai client: pip install openai") from None
        kwargs: dict[str, Any] = {"api_key": key, "timeout": self.timeout_s, "max_retries": 0}
        if base_url:
            kwargs["base_url"] = base_url
        kwargs["http_client"] = http_client
        return openai.OpenAI(**kwargs)

    # ------------------------------------------------------------------ the request
    def write(self, *, organ: str, lesion_type: str, organ_extent: tuple[int, int, int],
              overrides: Mapping[str, str] | None = None, seed: int = 0, num_lesions: int = 1) -> LesionReport:
        organ_id, name = check_request(organ, organ_extent, num_lesions)
        user = normalize_overrides(overrides, organ_id)  # a typo fails before any network call
        base_url, model, key = self._settings()
        extent = (int(organ_extent[0]), int(organ_extent[1]), int(organ_extent[2]))
        cavities = cavities_for(organ_id)
        messages = _messages(name, lesion_type, extent, num_lesions, overrides or {})
        schema = report_schema(cavities)
        values, size = self._ask(key, base_url, model, messages, schema, seed, cavities, extent, lesion_type)
        rng = np.random.default_rng(seed)
        sizes = [size] + [clamp_size(np.rint(np.asarray(size) * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER, 3)),
                                     extent) for _ in range(int(num_lesions) - 1)]
        return finalize_report(organ=name, organ_extent=extent, values=values, sizes=sizes, overrides=user)

    def _ask(self, key: str, base_url: str | None, model: str, messages: list[dict[str, str]],
             schema: dict[str, Any], seed: int, cavities: tuple[str, ...], extent: tuple[int, int, int],
             lesion_type: str) -> tuple[dict[str, Any], tuple[int, int, int]]:
        import openai

        where = f"LLM server {base_url or 'api.openai.com'} (model {model!r})"
        attempts = self.max_retries + 1
        problem = ""
        unreachable = True  # every attempt timed out or could not connect
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            # a fresh client per attempt: its deadline (timeout_s of wall clock) starts now
            http = self.http_client if self.http_client is not None else deadline_client(self.timeout_s,
                                                                                         base_url=base_url)
            try:
                client = self._client(base_url, key, http)
                response = client.chat.completions.create(
                    model=model, messages=messages, seed=int(seed), temperature=self.temperature, timeout=self.timeout_s,
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "lesion_report", "schema": schema, "strict": True}},
                )
                choices = getattr(response, "choices", None) or []
                content = choices[0].message.content if choices else None
                return parse_answer(content, cavities, extent=extent, lesion_type=lesion_type)
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                problem = (f"timed out: no complete answer within the {self.timeout_s:g} s deadline"
                           if isinstance(err, openai.APITimeoutError) else "connection failed")
                big = too_large(err)
                if big is not None:
                    problem, unreachable = f"unusable answer: {big}", False
            except (openai.RateLimitError, openai.InternalServerError) as err:
                problem, unreachable = f"HTTP {err.status_code}", False
            except openai.APIStatusError as err:  # 400/401/403/404...: retrying cannot help
                hint = " (check OPENAI_API_KEY)" if err.status_code in (401, 403) else ""
                if err.status_code == 400:
                    hint = " (does the server support response_format json_schema?)"
                raise _systemic(ExternalServiceError(
                    f"{where} refused the request: HTTP {err.status_code}{hint}: {_scrub(_message(err), key)}"
                )) from None
            except _InvalidAnswer as err:
                problem, unreachable = f"unusable answer: {err}", False
            finally:
                if http is not self.http_client:
                    http.close()
            problem = _scrub(problem, key)
            log.warning("%s attempt %d/%d failed: %s", where, attempt + 1, attempts, problem)
        error = ExternalServiceError(f"{where} gave no usable report after {attempts} attempts; last problem: {problem}")
        raise _systemic(error) if unreachable else error


def _systemic(error: ExternalServiceError) -> ExternalServiceError:
    """Mark an error that no retry of another request can avoid (read by batch runners)."""
    error.systemic = True  # type: ignore[attr-defined]
    return error


def _message(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:300]
    return str(getattr(err, "message", "") or type(err).__name__)[:300]


def _scrub(text: str, key: str) -> str:
    """Remove the API key (should a server echo it) from text that may be logged or raised."""
    return text.replace(key, "***") if key and key != _PLACEHOLDER_KEY else text


def _messages(organ: str, lesion_type: str, extent: tuple[int, int, int], num_lesions: int,
              overrides: Mapping[str, str]) -> list[dict[str, str]]:
    fixed = "; ".join(f"{k} = {v}" for k, v in overrides.items()) or "none"
    user = (
        f"Write the structured CT report of a {lesion_type} in the {organ}. The {organ}'s bounding box is "
        f"{extent[0]} x {extent[1]} x {extent[2]} voxels (1 mm); the lesion's bounding box size [X, Y, Z] must "
        f"not exceed it and should be typical for this lesion type. "
        f"{'There are ' + str(num_lesions) + ' such lesions; describe a typical one. ' if num_lesions > 1 else ''}"
        f"Give the mean CT value of the lesion in HU. Attributes fixed by the user: {fixed}. "
        "Choose every other attribute from the allowed values of the schema."
    )
    return [{"role": "system", "content": "You are a radiologist writing structured CT lesion reports as JSON."},
            {"role": "user", "content": user}]
