"""The LLM writer against a mocked OpenAI-compatible server (httpx.MockTransport in the openai client)."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import httpx
import pytest

from ld_augment.errors import ConfigError, ExternalServiceError
from ld_augment.reports import normalize_report
from ld_augment.reports.llm import LLMReportWriter

KEY = "sk-test-SECRET-0123456789"
EXTENT = (40, 30, 20)
GOOD = {
    "enhancement_status": "enhanced ct", "shape": ["Round-like"], "density": "low density lesion",
    "density_variations": "homogeneous", "surface_characteristics": "well-defined margin",
    "relationship_with_adjacent_organs": "no close relationship with surrounding organs",
    "specific_features": ["calculus"], "cavity": "within the parenchymal organ", "size": [12, 25, 8],
    "ct_value": 42.5,
}


def _completion(content: str | None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


class Server:
    """Replays a script of answers: a dict/str is a 200 completion, an int a bare status, an exception is raised."""

    def __init__(self, *script: Any) -> None:
        self.script, self.requests = list(script), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, int):
            return httpx.Response(step, json={"error": {"message": f"status {step} for key {KEY}"}})
        content = json.dumps(step) if isinstance(step, dict) else step
        return httpx.Response(200, json=_completion(content))


def _writer(server: Server, sleeps: list[float] | None = None, **kwargs: Any) -> LLMReportWriter:
    sleep: Callable[[float], None] = (sleeps.append if sleeps is not None else (lambda s: None))
    return LLMReportWriter(base_url="http://llm.test/v1", model="test-model", api_key=KEY, max_retries=2,
                           backoff_s=0.5, http_client=httpx.Client(transport=httpx.MockTransport(server)),
                           sleep=sleep, **kwargs)


def _write(writer: LLMReportWriter, **kwargs: Any):
    request = {"organ": "liver", "lesion_type": "cyst", "organ_extent": EXTENT, "seed": 3, **kwargs}
    return writer.write(**request)


def test_good_answer_is_normalized() -> None:
    server = Server(GOOD)
    report = _write(_writer(server))
    assert len(server.requests) == 1
    assert report == normalize_report(report)
    assert report.organ_id == 5 and report.shape == "round-like" and report.density == "hypodense lesion"
    assert report.specific_features == ["stone"] and report.ct_value == 42.5
    assert report.size == (12, 25, 8)  # inside the organ's (40, 30, 20): taken as answered
    body = json.loads(server.requests[0].content)
    assert body["model"] == "test-model" and body["seed"] == 3
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    props = fmt["json_schema"]["schema"]["properties"]
    assert "hypodense lesion" in props["density"]["enum"]
    assert props["cavity"]["enum"] == ["within the parenchymal organ", "protruding from the parenchymal organ"]
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_overrides_beat_the_llm_and_several_lesions_stay_inside_the_organ() -> None:
    report = _write(_writer(Server(GOOD)), overrides={"density": "hyperdense", "CT value": "300"}, num_lesions=4)
    assert report.density == "hyperdense lesion" and report.ct_value == 300.0
    assert len(report.bbox_sizes) == 4
    assert all(all(1 <= s <= e for s, e in zip(size, EXTENT)) for size in report.bbox_sizes)


def test_malformed_json_is_retried_then_reported(caplog) -> None:
    sleeps: list[float] = []
    server = Server("{not json")
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalServiceError, match="3 attempts.*not JSON"):
        _write(_writer(server, sleeps))
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]
    assert KEY not in caplog.text


def test_malformed_then_good_answer_succeeds() -> None:
    server = Server("```json\n{oops", None, GOOD)
    report = _write(_writer(server))
    assert len(server.requests) == 3 and report.ct_value == 42.5


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"density": "glowing"}, "glowing"),
        ({"shape": "round-like"}, "list of strings"),
        ({"cavity": "wall thickening"}, "cavity"),
        ({"size": [10, 10]}, "size"),
        ({"ct_value": "dark"}, "ct_value"),
        ({"ct_value": 90000}, "ct_value"),
        ({"size": None}, "size"),
    ],
)
def test_schema_violations_are_never_half_used(change: dict[str, Any], problem: str) -> None:
    bad = {**GOOD, **change}
    server = Server(bad)
    with pytest.raises(ExternalServiceError, match=problem):
        _write(_writer(server))
    assert len(server.requests) == 3


def test_missing_field_is_a_violation() -> None:
    bad = {k: v for k, v in GOOD.items() if k != "density"}
    with pytest.raises(ExternalServiceError, match="lacks density"):
        _write(_writer(Server(bad)))


def test_timeout_is_retried_then_reported(caplog) -> None:
    sleeps: list[float] = []
    server = Server(httpx.ReadTimeout("slow"))
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalServiceError, match="timed out") as info:
        _write(_writer(server, sleeps, timeout_s=0.1))
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]
    assert KEY not in str(info.value) and KEY not in caplog.text


def test_rate_limit_then_success() -> None:
    sleeps: list[float] = []
    server = Server(429, 429, GOOD)
    report = _write(_writer(server, sleeps))
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]
    assert report.density == "hypodense lesion"


def test_server_errors_exhaust_the_bounded_retries(caplog) -> None:
    server = Server(503)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalServiceError, match="HTTP 503"):
        _write(_writer(server))
    assert len(server.requests) == 3
    assert KEY not in caplog.text


def test_auth_error_is_not_retried_and_never_shows_the_key(caplog) -> None:
    server = Server(401)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalServiceError, match="401") as info:
        _write(_writer(server))
    assert len(server.requests) == 1
    assert KEY not in str(info.value) and "***" in str(info.value)
    assert KEY not in caplog.text and KEY not in repr(_writer(server))


def test_settings_come_from_the_environment_at_call_time(monkeypatch) -> None:
    server = Server(GOOD)
    writer = LLMReportWriter(http_client=httpx.Client(transport=httpx.MockTransport(server)), sleep=lambda s: None)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LD_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError, match="LD_LLM_MODEL"):
        _write(writer)
    monkeypatch.setenv("LD_LLM_MODEL", "env-model")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        _write(writer)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://local.test/v1")  # a local server needs no key
    _write(writer)
    assert server.requests[-1].url.host == "local.test"
    assert json.loads(server.requests[-1].content)["model"] == "env-model"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    _write(writer)
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_bad_overrides_fail_before_any_request() -> None:
    server = Server(GOOD)
    with pytest.raises(ConfigError, match="allowed"):
        _write(_writer(server), overrides={"shape": "hexagonal"})
    assert server.requests == []
