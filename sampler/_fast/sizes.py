"""Every size threshold of the fast path, in one place (docs/performance.md)."""

from __future__ import annotations

#: Candidate and kept sets up to this size are handled in plain Python floats and ints.
SMALL = 64
#: Candidate sets up to this size are listed by id (<= 128 KB of int64), and kept sets up
#: to it are drawn from their ids; larger ones by zeroing the rest of the row in place.
LISTED = 16_384
KEPT_IDS = LISTED
#: Block length of the block maxima (top-k) and the exact block sums (the draw).
BLOCK = 1024
#: The first nucleus threshold, relative to the largest exp (1): few ids on peaked rows.
FIRST_THRESHOLD = 1e-4
#: Raw top ids found for a processed draw, however few are reported: the last one's value
#: bounds every other id (the nucleus without a processed pass).
RAW_TOP = 5
