"""Issue 22 (LLM): a slow-dripping server meets a wall-clock deadline, huge answers are cut, absurd or extra
values are refused and retried instead of clamped into a report.

The drip test runs a real loopback HTTP server (127.0.0.1, in-process thread) that sends one byte a second:
the openai client's own timeout is per read, so without the deadline it would wait for ever.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ld_augment.errors import ExternalServiceError
from ld_augment.reports.http_deadline import MAX_RESPONSE_BYTES, deadline_client
from ld_augment.reports.llm import LLMReportWriter

KEY = "sk-test-SECRET-hostile-0123456789"
EXTENT = (101, 96, 44)  # the probe's liver box (mm)
GOOD = {
    "enhancement_status": "enhanced ct", "shape": ["round-like"], "density": "hypodense lesion",
    "density_variations": "homogeneous", "surface_characteristics": "well-defined margin",
    "relationship_with_adjacent_organs": "no close relationship with surrounding organs",
    "specific_features": [], "cavity": "within the parenchymal organ", "size": [30, 25, 20], "ct_value": 10.0,
}


def _completion(content: str) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


class Script:
    """MockTransport handler replaying answer texts (str) in order, the last one repeated."""

    def __init__(self, *answers: str) -> None:
        self.answers, self.calls = list(answers), 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return httpx.Response(200, json=_completion(answer))


def _mock_writer(script: Script, **kwargs: Any) -> LLMReportWriter:
    return LLMReportWriter(base_url="http://llm.test/v1", model="m", api_key=KEY, max_retries=1, backoff_s=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(script)), sleep=lambda s: None,
                           **kwargs)


def _write(writer: LLMReportWriter, lesion_type: str = "liver cyst"):
    return writer.write(organ="liver", lesion_type=lesion_type, organ_extent=EXTENT, seed=1)


@pytest.mark.parametrize("size, words", [
    ([10000, 20, 20], "larger than the organ"),           # a 10 m lesion: was clamped to the whole liver box
    ([1e300, 1.5, 1e308], "three positive integers"),      # was a 119 x 1 x 52 mm box
    ([30, 25, 0], "three positive integers"),
    ([30, 25, 20.5], "three positive integers"),
])
def test_absurd_sizes_are_refused_and_retried_never_clamped(size, words):
    script = Script(json.dumps({**GOOD, "size": size}))
    with pytest.raises(ExternalServiceError, match=words):
        _write(_mock_writer(script))
    assert script.calls == 2  # retried, then reported


def test_sizes_beyond_the_lesion_type_are_refused():
    """A 60 mm kidney stone fits the liver box but no stone (priors: up to 25 mm; 2x accepted) is that big."""
    answer = json.dumps({**GOOD, "size": [60, 20, 20]})
    with pytest.raises(ExternalServiceError, match="stone reaches about 25 mm; at most 50 mm"):
        _write(_mock_writer(Script(answer)), lesion_type="kidney stone")
    assert _write(_mock_writer(Script(answer)), lesion_type="liver cyst").size == (60, 20, 20)


def test_a_bad_size_then_a_good_one_uses_the_good_one_unchanged():
    script = Script(json.dumps({**GOOD, "size": [10000, 20, 20]}), json.dumps(GOOD))
    report = _write(_mock_writer(script))
    assert script.calls == 2 and report.size == (30, 25, 20)


def test_non_finite_json_numbers_are_refused():
    text = json.dumps({**GOOD, "size": [30, 25, 20]}).replace("[30, 25, 20]", "[NaN, Infinity, 3]")
    with pytest.raises(ExternalServiceError, match="three positive integers"):
        _write(_mock_writer(Script(text)))


def test_extra_keys_are_refused():
    script = Script(json.dumps({**GOOD, "diagnosis": "benign", "note": "x" * 1000}))
    with pytest.raises(ExternalServiceError, match="keys the schema does not allow: \\['diagnosis', 'note'\\]"):
        _write(_mock_writer(script))


def test_huge_answer_content_is_refused():
    script = Script(json.dumps(GOOD) + " " * (MAX_RESPONSE_BYTES + 10))
    with pytest.raises(ExternalServiceError, match="answer of 64 KB; a report is at most 64 KB"):
        _write(_mock_writer(script))


# ---------------------------------------------------------------- a real loopback server
class _Handler(BaseHTTPRequestHandler):
    mode = "drip"

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.seen_keys.append(self.headers.get("authorization", ""))  # type: ignore[attr-defined]
        body = json.dumps(_completion(json.dumps(GOOD))).encode()
        if self.mode == "huge":
            body = b'{"pad": "' + b"x" * (8 << 20) + b'"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            if self.mode == "drip":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    if self.server.stop.wait(1.0):  # type: ignore[attr-defined]
                        return
            else:
                self.wfile.write(body)
        except OSError:  # the client hung up: what the deadline is for
            pass


@pytest.fixture
def server(request):
    mode = getattr(request, "param", "drip")
    handler = type("H", (_Handler,), {"mode": mode})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.seen_keys, httpd.stop = [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


def _loopback_writer(httpd, timeout_s: float, retries: int = 0) -> LLMReportWriter:
    return LLMReportWriter(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="m", api_key=KEY,
                           timeout_s=timeout_s, max_retries=retries, backoff_s=0, sleep=lambda s: None)


def test_slow_drip_server_fails_within_the_deadline(server, caplog, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    import openai  # noqa: F401 - imported before the clock starts: the deadline is the server's, not the import's

    writer = _loopback_writer(server, timeout_s=1.0, retries=1)
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(ExternalServiceError) as err:
        _write(writer)
    elapsed = time.monotonic() - t0
    assert elapsed < 2 * 1.0 + 1.5, f"{elapsed:.1f} s for 2 attempts of a 1 s deadline"  # the documented bound
    assert elapsed >= 2 * 1.0 * 0.9
    assert "1 s deadline" in str(err.value) and "2 attempts" in str(err.value)
    assert len(server.seen_keys) == 2 and server.seen_keys[0] == f"Bearer {KEY}"
    assert KEY not in caplog.text and KEY not in str(err.value)


@pytest.mark.parametrize("server", ["huge"], indirect=True)
def test_huge_response_is_cut_at_the_limit(server, monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ExternalServiceError, match="exceeded 64 KB"):
        _write(_loopback_writer(server, timeout_s=10.0))


@pytest.mark.parametrize("server", ["fast"], indirect=True)
def test_a_prompt_server_still_answers_through_the_deadline_client(server, monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    report = _write(_loopback_writer(server, timeout_s=10.0))
    assert report.size == (30, 25, 20)


def test_deadline_client_counts_connect_time_too():
    client = deadline_client(0.0001)
    time.sleep(0.01)
    with pytest.raises(httpx.TimeoutException):
        client.get("http://127.0.0.1:9/")
    client.close()
