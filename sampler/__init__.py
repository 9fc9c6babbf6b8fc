"""refsampler: the reference implementation of OpenAI Completions sampling, in NumPy.

>>> import sampler
>>> sampler.processors.STEP_ORDER
('logit_bias', 'penalties', 'temperature', 'top_p')

``import sampler`` loads NumPy and nothing heavier; onnxruntime and tiktoken load when a
model or tokenizer is first used.
"""

__version__ = "0.1.0"

from . import logprobs, processors, select  # noqa: E402  (pure NumPy, no model)
from .engine import Engine  # noqa: E402
from .errors import RequestError  # noqa: E402
from .step import RowParams, sample_step  # noqa: E402

__all__ = [
    "Engine",
    "RequestError",
    "RowParams",
    "sample_step",
    "processors",
    "select",
    "logprobs",
    "__version__",
]
