"""pytest (``--doctest-modules``): skip the doctests of an adapter whose runtime is not
installed — ``adapters.vllm``, ``adapters.vllm_mrv2`` and ``adapters.hf`` import theirs at
module level."""

import importlib.util

_RUNTIMES = {
    "vllm.py": ("vllm",),
    "vllm_mrv2.py": ("vllm",),
    "hf.py": ("torch", "transformers"),
}

collect_ignore = [
    name
    for name, mods in _RUNTIMES.items()
    if any(importlib.util.find_spec(m) is None for m in mods)
]
