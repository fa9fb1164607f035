"""An httpx client whose every request has a wall-clock deadline and a response-size limit.

httpx's (and so the openai client's) timeout is per socket operation: a server that sends one byte a second
never trips it and held one report request for over 7 minutes. Here the network backend under httpx hands
each connect/read/write only the time left before the deadline, and counts the bytes read, so a request
ends by its deadline (as httpx's own timeout error) and an answer of hundreds of MB is cut at the limit.
Legacy `httpx` is used for both openai 1.x (built on it) and later versions (which accept an httpx client).
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

#: A structured report answer is about 1 KB; anything near this is not one.
MAX_RESPONSE_BYTES = 64 * 1024


class ResponseTooLarge(httpcore.ReadError):
    """The server sent more than the limit (read as an unusable answer, not as an unreachable server). A read
    error to httpx, so every client maps it like a broken connection; `too_large` finds it in the cause chain."""


class _Budget:
    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds, self.deadline = float(seconds), time.monotonic() + float(seconds)
        self.max_bytes, self.received = int(max_bytes), 0

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise error(f"no answer within the {self.seconds:g} s deadline")
        return remaining if timeout is None else min(float(timeout), remaining)

    def count(self, n: int) -> None:
        self.received += n
        if self.received > self.max_bytes:
            raise ResponseTooLarge(f"the response exceeded {self.max_bytes // 1024} KB")


class _Stream:
    """A network stream that spends the request's budget (httpcore's NetworkStream interface)."""

    def __init__(self, inner: Any, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, self._budget.left(timeout, httpcore.ReadTimeout))
        self._budget.count(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._budget.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> "_Stream":
        inner = self._inner.start_tls(ssl_context, server_hostname, self._budget.left(timeout, httpcore.ConnectTimeout))
        return _Stream(inner, self._budget)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    """httpcore's NetworkBackend interface: connections whose streams spend one budget."""

    def __init__(self, inner: Any, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> _Stream:
        stream = self._inner.connect_tcp(host, port, self._budget.left(timeout, httpcore.ConnectTimeout),
                                         local_address, socket_options)
        return _Stream(stream, self._budget)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _Stream:
        stream = self._inner.connect_unix_socket(path, self._budget.left(timeout, httpcore.ConnectTimeout),
                                                 socket_options)
        return _Stream(stream, self._budget)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _proxy_for(url: str | None) -> str | None:
    """The environment's proxy for `url` (HTTPS_PROXY / NO_PROXY...), as httpx's trust_env would pick it."""
    parts = urlsplit(url or "https://api.openai.com/v1")
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def deadline_client(seconds: float, *, base_url: str | None = None,
                    max_bytes: int = MAX_RESPONSE_BYTES) -> httpx.Client:
    """A one-request httpx client: everything it sends and receives ends `seconds` from now, <= max_bytes."""
    transport = httpx.HTTPTransport(retries=0, proxy=_proxy_for(base_url))
    pool = transport._pool  # httpx offers no public hook for the network backend; tests pin this down
    pool._network_backend = _Backend(pool._network_backend, _Budget(seconds, max_bytes))
    # trust_env=False: the proxy is already on our transport; env proxies would mount plain ones beside it
    return httpx.Client(transport=transport, timeout=seconds, trust_env=False)


def too_large(exc: BaseException) -> ResponseTooLarge | None:
    """The ResponseTooLarge somewhere in an exception's cause chain (clients wrap it), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ResponseTooLarge):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
