"""Where every sequence's randomness comes from (spec §6), written once.

Candidate ``c`` of prompt ``p`` of a request draws from its own generator,
``Generator(PCG64(SeedSequence(entropy, spawn_key=(p, c))))``, one uniform per step. The
request's entropy is its seed taken modulo 2**64 (a negative int64 seed is its two's
complement), or fresh entropy drawn once per request when it has no seed. So a candidate's
draws never depend on n, best_of, other prompts, other requests, or streaming.

>>> a = generator(request_entropy(42), 0, 1).random()
>>> b = generator(request_entropy(42), 1, 1).random()
>>> a == generator(request_entropy(42), 0, 1).random() != b
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["request_entropy", "generator"]


def request_entropy(seed: int | None) -> int:
    """The entropy shared by a request's candidates: ``seed % 2**64``, or fresh if None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    return int(seed) % 2**64


def generator(entropy: int, prompt: int, candidate: int) -> np.random.Generator:
    """The generator of candidate ``candidate`` of prompt ``prompt`` (a seed may be given
    as the entropy directly: it is taken modulo 2**64 here too)."""
    seq = np.random.SeedSequence(int(entropy) % 2**64, spawn_key=(prompt, candidate))
    return np.random.Generator(np.random.PCG64(seq))
