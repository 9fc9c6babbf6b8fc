"""The contract as an executable check for any OpenAI-compatible Completions server.

``sampler conformance BASE_URL --model ID`` (or :func:`run`) sends a bounded set of short
requests over HTTP and checks each rule of the contract (``docs/conformance.md`` lists them)
from the outside: no model, tokenizer or GPU of its own, only ``httpx``. Each result is
``pass``, ``fail`` (with the minimal request and the evidence), ``unsupported`` (the server
refused a feature the check needs with a clean 4xx) or ``error`` (5xx, timeout, malformed
body). ``profile="openai"`` checks OpenAI's behaviour; ``"strict"`` adds this project's
[decided] and [beyond] guarantees. Statistical checks bound their false-failure probability
by :data:`~sampler.conformance.stats.ALPHA` each, and ``seed`` makes a run reproducible.

>>> from sampler.conformance import CHECKS, Check
>>> len(CHECKS) >= 40, sorted({c.tag for c in CHECKS})
(True, ['OpenAI', 'beyond', 'decided'])
"""

from . import sections  # noqa: F401  (registers the checks)
from .client import Broken, Client, Failed, Refused
from .kit import CHECKS, Check, Context, Report, Result, check, run

__all__ = [
    "CHECKS",
    "Check",
    "Context",
    "Report",
    "Result",
    "run",
    "check",
    "Client",
    "Failed",
    "Refused",
    "Broken",
]
