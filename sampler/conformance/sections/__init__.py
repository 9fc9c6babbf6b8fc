"""The checks, one module per part of the contract, registered in spec order."""

# registration order is the order within a section
from . import request, steps, bias, logprobs, echo, output, choices, stream  # noqa: F401, I001
