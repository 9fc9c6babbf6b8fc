"""``import sampler`` loads NumPy and nothing heavy (checked in a fresh interpreter)."""

import subprocess
import sys

HEAVY = (
    "onnxruntime",
    "onnx",
    "tiktoken",
    "starlette",
    "uvicorn",
    "torch",
    "transformers",
    "gguf",
    "tqdm",
)


def test_import_sampler_is_light():
    code = (
        "import sys, sampler, sampler.processors, sampler.select, sampler.logprobs\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_processors_usable_without_a_model():
    code = (
        "import numpy as np, sys, sampler\n"
        "z = np.zeros((2, 5), np.float32)\n"
        "z = sampler.processors.top_p(sampler.processors.temperature(z, [0.5, 1.0]), 0.5)\n"
        "print(sampler.select.sample(z, [0.1, 0.9]).tolist())\n"
        "assert 'onnxruntime' not in sys.modules and 'tiktoken' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0, 2]"
