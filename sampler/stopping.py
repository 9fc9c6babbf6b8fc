"""Token bytes -> text, stop strings across token boundaries, and what a stream may show.

A :class:`TextTracker` follows one choice: it decodes token bytes incrementally (invalid
UTF-8 becomes U+FFFD exactly as ``bytes.decode("utf-8", "replace")`` does; an incomplete
tail is held only while it can still become a valid character), records each token's
character offset, finds the first stop string, and says how much text is safe to show
now: nothing a stop string could still remove, no half character (spec §7, §10).

>>> t = TextTracker(stop=("\\n\\n",))
>>> [t.add(b) for b in (b"Hi", b"\\n", b"\\n")]
[0, 2, 3]
>>> t.text, t.cut, t.stopped, t.text[:t.final_end()]
('Hi\\n\\n', 2, True, 'Hi')
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TextTracker", "held_prefix"]


def held_prefix(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    That many trailing characters could still begin a stop match, so a stream holds
    them back.

    >>> held_prefix("Hello wor", ["world", "x"])
    3
    """
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:n]):
                held = n
                break
    return held


class TextTracker:
    """The text of one choice as its tokens arrive.

    ``add(token_bytes)`` returns the token's character offset within the text (a token
    that starts inside a multi-byte character gets that character's offset). ``text``
    holds every complete character so far; ``cut`` is where the first stop string
    begins (``None`` until one occurs); ``finish()`` turns a trailing incomplete
    character into U+FFFD once the choice has ended.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(stop)
        self._max_stop = max((len(s) for s in self.stop), default=0)
        self._pending = b""  # bytes of an incomplete character
        self.text = ""
        self.cut: int | None = None

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    def add(self, data: bytes) -> int:
        """Append one token's bytes; return the token's character offset."""
        offset = len(self.text)
        if self._pending and data and not _continues(self._pending, data[0]):
            offset += 1  # the pending bytes end here as one U+FFFD before this token
        buf = self._pending + data
        split = len(buf) - _incomplete_tail(buf)
        self._pending = buf[split:]
        self._append(buf[:split].decode("utf-8", "replace"))
        return offset

    def finish(self) -> None:
        """The choice has ended: an incomplete trailing character becomes U+FFFD."""
        pending, self._pending = self._pending, b""
        self._append(pending.decode("utf-8", "replace"))

    def _append(self, new: str) -> None:
        if not new:
            return
        start = len(self.text)
        self.text += new
        if self.cut is None and self.stop:
            self.cut = self._find_stop(start)

    def _find_stop(self, start: int) -> int | None:
        lo = max(0, start - self._max_stop + 1)
        hits = [i for i in (self.text.find(s, lo) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def visible_end(self) -> int:
        """How much of ``text`` a stream may show now (the stop cut, or minus a hold)."""
        if self.cut is not None:
            return self.cut
        return len(self.text) - held_prefix(self.text, self.stop)

    def final_end(self) -> int:
        """Where the final text ends: the stop cut, or the end of the text."""
        return self.cut if self.cut is not None else len(self.text)


def _incomplete_tail(buf: bytes) -> int:
    """Length of the trailing bytes that are a valid but unfinished character (0 to 3).

    Only a valid prefix is held: bytes that can never complete a character (e.g.
    ``\\xed\\xa0``, a surrogate) are decoded to U+FFFD at once.
    """
    for n in range(1, min(3, len(buf)) + 1):
        lead = buf[-n]
        if 0x80 <= lead <= 0xBF:  # a continuation byte: look further back
            continue
        return n if _valid_prefix(buf[-n:]) else 0
    return 0


def _valid_prefix(data: bytes) -> bool:
    """Whether ``data`` is the beginning of a valid UTF-8 character, not yet complete."""
    try:
        data.decode("utf-8")
        return False  # complete
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data" and err.start == 0


def _continues(pending: bytes, byte: int) -> bool:
    """Whether ``byte`` extends the incomplete character ``pending`` (validly)."""
    try:
        (pending + bytes([byte])).decode("utf-8")
        return True
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"
