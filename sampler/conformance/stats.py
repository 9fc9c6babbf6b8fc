"""Tail bounds for the kit's statistical checks: Chernoff's, so no tables are needed.

For ``k`` successes in ``n`` draws with success probability ``p``, ``P(X ≥ k) ≤
exp(−n·KL(k/n ‖ p))`` when ``k/n ≥ p`` (and the mirror image below), with ``KL`` the
relative entropy of two Bernoulli laws. A check fails only when this bound is below its
share of :data:`ALPHA`, so the probability that a correct server fails a check is at most
``ALPHA`` (union bound over the check's tests).

>>> round(binomial_outside(60, 100, 0.5, 0.5), 4)   # 60 heads of 100 fair flips: P ≤ 0.13
0.1335
>>> binomial_outside(50, 100, 0.4, 0.6)             # inside the interval: no evidence
1.0
"""

from __future__ import annotations

import math

__all__ = ["ALPHA", "bernoulli_kl", "binomial_outside"]

ALPHA = 1e-4  # each statistical check's false-failure probability, at most


def bernoulli_kl(q: float, p: float) -> float:
    """KL(Bernoulli(q) ‖ Bernoulli(p)) in nats (p in (0, 1) unless q equals it)."""

    def term(a: float, b: float) -> float:
        if a == 0.0:
            return 0.0
        if b == 0.0:
            return math.inf
        return a * math.log(a / b)

    return term(q, p) + term(1 - q, 1 - p)


def binomial_outside(k: int, n: int, low: float, high: float) -> float:
    """A bound on the probability of a count as far as ``k`` of ``n`` outside ``[low,
    high]``, for any success probability in that interval (1.0 when k/n is inside)."""
    if n == 0:
        return 1.0
    q = k / n
    if q > high:
        return math.exp(-n * bernoulli_kl(q, high))
    if q < low:
        return math.exp(-n * bernoulli_kl(q, low))
    return 1.0
