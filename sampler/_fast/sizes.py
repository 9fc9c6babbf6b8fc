"""Every size threshold of the fast path, in one place (docs/performance.md)."""

from __future__ import annotations

#: Candidate sets up to this size are handled in plain Python integers.
SMALL = 64
#: Block length of the block maxima (top-k) and the exact block sums (total weights).
BLOCK = 1024
#: The first nucleus threshold, relative to the largest exp (1): few ids on peaked rows.
FIRST_THRESHOLD = 1e-4
#: Raw top ids found for a processed draw, however few are reported: the last one's value
#: bounds every other id (the nucleus without a processed pass).
RAW_TOP = 5
