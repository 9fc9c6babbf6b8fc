"""The fast path's machinery, private: what makes the public definitions cheap.

:mod:`sampler.step` composes it; :mod:`sampler.processors`, :mod:`sampler.select` and
:mod:`sampler.logprobs` keep the short batched definitions and call in here for the work.
Nothing here is API. Every result is proven equal to :mod:`sampler.reference` by the
tests (``tests/test_definition.py``, ``tests/test_properties.py``); ``docs/performance.md``
explains the bounds, brackets and thresholds.

- :mod:`.sizes`: every size threshold, in one place;
- :mod:`.limit`: the step-3 limit T -> 0+ (a temperature below float32's range);
- :mod:`.nucleus`: finding step 4's kept set without sorting the row;
- :mod:`.edits`: steps 1-2 as one sparse edit, kept up to date token by token;
- :mod:`.topk`: the top-k ids of a row by block maxima;
- :mod:`.draw`: steps 1-5 fused for one row (one exp pass; the raw side's bounds).
"""
