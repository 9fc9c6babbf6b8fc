"""The kit's machinery: checks, what they return, the context they share, and the run.

A check is a function of a :class:`Context` registered with :func:`check`; it returns the
evidence of a pass as one line, or raises :class:`~sampler.conformance.client.Failed`
(fail), :class:`~sampler.conformance.client.Refused` (unsupported: the server refused a
feature the check needs, with a clean 4xx) or :class:`~sampler.conformance.client.Broken`
(error: 5xx, timeout, malformed body). Any other exception is the kit's own bug and is
reported as an error naming it, never hidden.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .client import Broken, Client, Failed, Refused

__all__ = ["Check", "Context", "Result", "Report", "CHECKS", "check", "run", "TAGS"]

TAGS = ("OpenAI", "decided", "beyond")
PROFILES = {"openai": ("OpenAI",), "strict": TAGS}


@dataclass(frozen=True)
class Check:
    section: str  # the spec section, "1" … "10"
    name: str
    tag: str  # "OpenAI" | "decided" | "beyond"
    rule: str  # the rule, as the spec states it
    how: str  # how it is observed from outside
    fn: Callable[[Context], str]
    last: bool = False  # run after every other check (it reads what the run received)


CHECKS: list[Check] = []


def check(
    section: str, tag: str, rule: str, how: str, *, last: bool = False
) -> Callable[[Callable], Callable]:
    """Register a check; its name is the function's name."""
    assert tag in TAGS, tag

    def add(fn: Callable[[Context], str]) -> Callable[[Context], str]:
        CHECKS.append(Check(section, fn.__name__, tag, rule, how, fn, last))
        return fn

    return add


@dataclass
class Result:
    section: str
    check: str
    tag: str
    result: str  # "pass" | "fail" | "unsupported" | "error"
    evidence: str
    request: Any = None
    rule: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """What a run found: ``server`` (what the server said of itself) and the results."""

    base_url: str
    model: str
    profile: str
    seed: int
    server: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check that ran passed (the exit status of the command)."""
        return all(r.result == "pass" for r in self.results)

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("pass", "fail", "unsupported", "error")}
        for r in self.results:
            out[r.result] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        keys = ("section", "check", "tag", "result", "evidence", "request", "rule")
        return {
            "server": self.server,
            "run": {
                "base_url": self.base_url,
                "model": self.model,
                "profile": self.profile,
                "seed": self.seed,
                "requests": self.requests,
                "seconds": round(self.seconds, 1),
                "counts": self.counts(),
            },
            "checks": [{k: asdict(r)[k] for k in keys} for r in self.results],
        }

    def markdown(self) -> str:
        """The results as a Markdown table (section, check, tag, result, evidence)."""
        rows = ["| § | check | tag | result | evidence |", "|---|---|---|---|---|"]
        for r in self.results:
            ev = r.evidence.replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {r.section} | `{r.check}` | {r.tag} | {r.result} | {ev} |")
        c = self.counts()
        tail = (
            f"\n{c['pass']} pass, {c['fail']} fail, {c['unsupported']} unsupported, "
            f"{c['error']} error ({self.requests} requests, {self.seconds:.0f} s)\n"
        )
        return "\n".join(rows) + "\n" + tail

    def table(self, width: int = 100) -> str:
        """The summary printed at the end of a run: one line per check."""
        lines = []
        for r in self.results:
            head = f"§{r.section:<3}{r.check:<32}{r.tag:<8}{r.result:<12}"
            room = max(20, width - len(head))
            ev = r.evidence.replace("\n", " ")
            lines.append(head + (ev if len(ev) <= room else ev[: room - 1] + "…"))
        c = self.counts()
        lines.append(
            f"{c['pass']} pass, {c['fail']} fail, {c['unsupported']} unsupported, "
            f"{c['error']} error · {self.requests} requests · {self.seconds:.0f} s"
        )
        return "\n".join(lines)


class Context:
    """What checks share: the client, the model id, the seed and memoised probes."""

    def __init__(self, client: Client, model: str, seed: int, server: dict[str, Any]) -> None:
        self.client, self.model, self.seed, self.server = client, model, seed, server
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._seeds = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
        self._n_cap = 128  # the largest n the server took (halved when refused)

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, **fields}

    def complete(self, **fields: Any) -> dict[str, Any]:
        """A non-stream request that must succeed; its JSON body."""
        return self.client.ok(self.body(**fields)).body

    def stream(self, **fields: Any) -> list[Any]:
        """A stream request that must succeed; its events (``"[DONE]"`` included)."""
        return self.client.ok(self.body(stream=True, **fields)).events

    def new_seed(self) -> int:
        """A request seed, reproducible from the run's ``--seed``."""
        with self._lock:
            return int(self._seeds.integers(0, 2**31 - 1))

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per run (a probe several checks use); its exception too."""
        if key not in self._memo:
            try:
                self._memo[key] = ("ok", make())
            except Exception as exc:  # kept, so each check that needs it reports it
                self._memo[key] = ("raise", exc)
        kind, value = self._memo[key]
        if kind == "raise":
            raise value
        return value

    def samples(self, count: int, **fields: Any) -> list[dict[str, Any]]:
        """``count`` independent choices of one request: with ``n`` as large as the server
        takes (up to 128; a refused ``n`` is halved), or, when the server returns fewer
        choices than ``n``, one seeded request each."""
        out: list[dict[str, Any]] = []
        while len(out) < count:
            n = min(count - len(out), self._n_cap)
            try:
                got = self.complete(n=n, seed=self.new_seed(), **fields)["choices"]
            except Refused:
                if n == 1:
                    raise
                self._n_cap = max(1, n // 2)
                continue
            if len(got) != n:  # n ignored: one request per choice
                bodies = [
                    self.body(seed=self.new_seed(), **fields) for _ in range(count - len(out))
                ]
                return out + [r.body["choices"][0] for r in self.client.many(bodies)]
            out.extend(got)
        return out


def choice(resp: dict[str, Any], i: int = 0) -> dict[str, Any]:
    try:
        return resp["choices"][i]
    except (KeyError, IndexError, TypeError):
        raise Broken(f"no choice {i} in {json.dumps(resp)[:200]}") from None


def lp(c: dict[str, Any]) -> dict[str, Any]:
    """A choice's logprobs object (a malformed one is the server's error)."""
    obj = c.get("logprobs")
    if not isinstance(obj, dict):
        raise Broken(f"logprobs requested, got {json.dumps(obj)[:120]}")
    if "tokens" not in obj and "content" in obj:
        raise Broken(
            "logprobs in the Chat Completions shape (a 'content' list), not the "
            "Completions one (tokens, token_logprobs, top_logprobs, text_offset)"
        )
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        if not isinstance(obj.get(key), list):
            raise Broken(f"logprobs.{key} is not a list: {json.dumps(obj.get(key))[:80]}")
    return obj


def logsumexp(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return -math.inf
    m = float(v.max())
    return m + math.log(float(np.exp(v - m).sum()))


def server_info(client: Client, model: str) -> dict[str, Any]:
    """What the server says of itself and of the model (``GET /models``), best effort."""
    info: dict[str, Any] = {"base_url": client.base_url, "model": model}
    try:
        r = client.get("/models")
    except Failed as err:
        info["models"] = f"unreadable: {err.evidence}"
        return info
    info["server_header"] = r.headers.get("server")
    data = r.body.get("data") if isinstance(r.body, dict) else None
    if isinstance(data, list):
        info["models"] = [m.get("id") for m in data if isinstance(m, dict)]
        card = next((m for m in data if isinstance(m, dict) and m.get("id") == model), None)
        if card is not None:
            info["card"] = card
    else:
        info["models"] = f"HTTP {r.status}"
    return info


def run(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    profile: str = "openai",
    only: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    timeout: float = 120.0,
    checks: Sequence[Check] | None = None,
) -> Report:
    """Run the kit against ``base_url`` (as the openai SDK's, e.g.
    ``http://127.0.0.1:8000/v1``) for ``model``; returns the :class:`Report`.

    ``profile="openai"`` runs the checks of OpenAI's behaviour; ``"strict"`` adds this
    project's [decided] and [beyond] guarantees. ``only`` keeps the given spec sections.
    """
    from . import sections  # noqa: F401  (registers the checks)

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    chosen = [
        c
        for c in (CHECKS if checks is None else checks)
        if c.tag in PROFILES[profile] and (not only or c.section in set(only))
    ]
    chosen.sort(key=lambda c: (c.last, int(c.section)))  # stable: module order within
    client = Client(base_url, api_key=api_key, timeout=timeout)
    t0 = time.monotonic()
    try:
        info = server_info(client, model)
        ctx = Context(client, model, seed, info)
        report = Report(base_url, model, profile, seed, info)
        bar = _bar(len(chosen), progress)
        for c in chosen:
            bar.set_postfix_str(f"§{c.section} {c.name}")
            report.results.append(_one(c, ctx))
            bar.update()
        bar.close()
        report.results.sort(key=lambda r: int(r.section))
    finally:
        client.close()
    report.requests, report.seconds = client.sent, time.monotonic() - t0
    return report


def _one(c: Check, ctx: Context) -> Result:
    t = time.monotonic()
    kind, request = "pass", None
    try:
        evidence = c.fn(ctx)
    except Refused as out:
        kind, evidence, request = "unsupported", out.evidence, out.request
    except Broken as out:
        kind, evidence, request = "error", out.evidence, out.request
    except Failed as out:
        kind, evidence, request = "fail", out.evidence, out.request
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a body not shaped
        kind = "error"  # as OpenAI's (or a bug of the kit's: either way, never a pass)
        evidence = f"a response not shaped as expected ({type(exc).__name__}: {exc})"
    except Exception as exc:  # the kit's own bug: say so, never pass
        kind, evidence = "error", f"the kit failed: {type(exc).__name__}: {exc}"
    return Result(c.section, c.name, c.tag, kind, evidence, request, c.rule, time.monotonic() - t)


def _bar(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not show, unit="check", leave=False)
