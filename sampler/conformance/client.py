"""HTTP only: what the kit sends and what it saw coming back.

The kit has no model, tokenizer or GPU of its own; everything it knows about a server comes
through :class:`Client`, which posts JSON and reads plain or server-sent-event replies with
``httpx``. Every reply is classified once (:func:`Client.ok` raises the kit's outcomes) and
every JSON document received is scanned for ``NaN`` and ``Infinity``, which JSON does not
have (spec §4: never NaN).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Client", "Reply", "Failed", "Refused", "Broken"]


class Failed(Exception):
    """The rule is broken: ``evidence`` says how, ``request`` is the minimal request."""

    def __init__(self, evidence: str, request: Any = None) -> None:
        super().__init__(evidence)
        self.evidence, self.request = evidence, request


class Refused(Failed):
    """The server refused a feature the check needs with a clean 4xx (``unsupported``)."""


class Broken(Failed):
    """A 5xx, a timeout, a dropped connection or a malformed body (``error``)."""


@dataclass
class Reply:
    """One response: its status, headers, raw text and, when it parsed, its JSON (or, for
    a stream, the parsed ``data:`` events in order, ``[DONE]`` as the string)."""

    status: int
    headers: dict[str, str]
    text: str
    body: Any = None
    events: list[Any] = field(default_factory=list)
    problem: str | None = None  # why the body could not be read as the kind expected

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``error`` object of an error body, if it has one."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"]
        return None


def _constant(name: str) -> float:
    raise ValueError(f"the JSON holds {name}, which is not JSON")


def parse_json(text: str) -> Any:
    """Strict JSON: ``NaN``/``Infinity`` raise ValueError (Python's json accepts them)."""
    return json.loads(text, parse_constant=_constant)


def parse_events(text: str) -> tuple[list[Any], str | None]:
    """The ``data:`` payloads of an SSE body, and the first framing problem seen."""
    events: list[Any] = []
    problem = None
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        data = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        others = [ln for ln in block.split("\n") if ln and not ln.startswith(("data:", ":"))]
        if others and problem is None:
            problem = f"a line that is not data: {others[0][:80]!r}"
        if not data:
            continue
        payload = "\n".join(data)
        if payload == "[DONE]":
            events.append("[DONE]")
            continue
        try:
            events.append(parse_json(payload))
        except ValueError as err:
            problem = problem or f"an event that is not JSON: {err}: {payload[:80]!r}"
    if not text.endswith("\n\n") and problem is None:
        problem = "the stream does not end with a blank line"
    return events, problem


class Client:
    """Posts to one server's ``/completions`` (``base_url`` as the openai SDK's)."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        import httpx  # the kit's one dependency beyond NumPy

        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self._http = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._httpx = httpx
        self._lock = threading.Lock()
        self.sent = 0  # requests sent (the kit is bounded: a few thousand)
        self.not_json: list[str] = []  # NaN/Infinity or other invalid JSON seen anywhere

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Reply:
        return self._send("GET", path, None, raw=None)

    def post(self, body: Any, *, path: str = "/completions", raw: bytes | None = None) -> Reply:
        """POST ``body`` as JSON (or ``raw`` bytes as they are). A stream request (``stream``
        true in the body) is read to its end and its events parsed."""
        return self._send("POST", path, body, raw=raw)

    def _send(self, method: str, path: str, body: Any, *, raw: bytes | None) -> Reply:
        with self._lock:
            self.sent += 1
        content = raw if raw is not None else (None if body is None else json.dumps(body))
        headers = {"content-type": "application/json"} if content is not None else {}
        try:
            r = self._http.request(method, self.base_url + path, content=content, headers=headers)
        except self._httpx.TimeoutException as err:
            raise Broken(f"timed out: {err}", body) from None
        except self._httpx.HTTPError as err:
            raise Broken(f"the connection failed: {type(err).__name__}: {err}", body) from None
        reply = Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)
        streaming = isinstance(body, dict) and body.get("stream") is True
        if streaming and r.status_code == 200:
            reply.events, reply.problem = parse_events(r.text)
            for ev in reply.events:
                if isinstance(ev, dict) and ev.get("error") is not None:
                    reply.problem = reply.problem or f"an error in the stream: {ev['error']}"
        else:
            try:
                reply.body = parse_json(r.text)
            except ValueError as err:
                reply.problem = f"the body is not JSON ({err}): {r.text[:120]!r}"
        if reply.problem and ("NaN" in reply.problem or "Infinity" in reply.problem):
            with self._lock:
                self.not_json.append(f"{_brief(body)} → {reply.problem}")
        return reply

    def ok(self, body: dict[str, Any]) -> Reply:
        """POST and require a good answer: a clean 4xx raises :class:`Refused` (the feature
        is unsupported), anything broken raises :class:`Broken`."""
        reply = self.post(body)
        if 400 <= reply.status < 500:
            err = reply.error
            what = err.get("message") if err else reply.text[:200]
            raise Refused(f"HTTP {reply.status}: {str(what)[:300]}", body)
        if reply.status != 200:
            raise Broken(f"HTTP {reply.status}: {reply.text[:300]}", body)
        if reply.problem:
            raise Broken(reply.problem, body)
        if not body.get("stream") and not isinstance(reply.body, dict):
            raise Broken(f"the body is not a JSON object: {reply.text[:120]!r}", body)
        if not body.get("stream") and not isinstance(reply.body.get("choices"), list):
            raise Broken(f"no choices list in {reply.text[:200]!r}", body)
        return reply

    def many(self, bodies: Sequence[dict[str, Any]], workers: int = 4) -> list[Reply]:
        """:meth:`ok` for each body, ``workers`` at a time, in order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self.ok, bodies))


def _brief(body: Any) -> str:
    text = json.dumps(body) if body is not None else "GET"
    return text if len(text) <= 200 else text[:197] + "..."
