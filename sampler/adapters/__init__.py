"""Adapters: OpenAI Completions sampling, with refsampler's exact semantics, in other runtimes.

One module per runtime; each imports its runtime itself, and this package imports none of
them (``import sampler`` never loads this package):

- ``adapters.core``: the shared part (validated params, per-sequence state, logprobs), NumPy
- ``adapters.hf``: HF transformers, ``OpenAILogitsProcessor`` and ``generate``
- ``adapters.llama_cpp``: llama-cpp-python, ``LogitsProcessor``, ``generate``,
  ``logprobs_from_scores``
- ``adapters.genai``: onnxruntime-genai runs the model, we sample: ``generate``, ``prepare``
- ``adapters.vllm``: vLLM's V1 runner, ``OpenAILogitsProcessor``, and ``Processor`` (the class the
  installed vLLM runs); ``adapters.vllm_mrv2``: Model Runner V2, ``OpenAILogitsProcessorV2``
  (both: per request ``extra_args["openai"]``)

What each runtime does natively versus with its adapter: ``docs/adapters/index.md``.
"""
