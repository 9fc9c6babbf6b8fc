"""refsampler: the reference implementation of OpenAI Completions sampling, in NumPy.

>>> import sampler
>>> sampler.processors.STEP_ORDER
('logit_bias', 'penalties', 'temperature', 'top_p')

``sampler.reference`` is the definition, one row at a time; ``processors``, ``select``,
``logprobs`` and ``sample_step`` are the batched fast path, tested equal to it.
``import sampler`` loads NumPy and nothing heavier; onnxruntime and tiktoken load when a
model or tokenizer is first used.
"""

__version__ = "0.1.0"

from . import logprobs, processors, reference, select  # noqa: E402  (pure NumPy, no model)
from .engine import Engine  # noqa: E402
from .errors import RequestError  # noqa: E402
from .params import SamplingParams  # noqa: E402
from .step import Row, sample_step  # noqa: E402

__all__ = [
    "Engine",
    "RequestError",
    "SamplingParams",
    "Row",
    "sample_step",
    "reference",
    "processors",
    "select",
    "logprobs",
    "__version__",
]
