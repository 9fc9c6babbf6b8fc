"""Hand-computed cases for text tracking: UTF-8 hold-back, offsets, stop strings."""

from sampler.stopping import TextTracker, held_prefix


def test_incomplete_character_is_held_then_completed():
    t = TextTracker()
    assert t.add(b"\xf0\x9f") == 0 and t.text == ""  # half an emoji: held
    assert t.add(b"\x98") == 0 and t.text == ""
    assert t.add(b"\x8a!") == 0 and t.text == "😊!"  # starts inside 😊: its offset


def test_bytes_that_can_never_be_valid_are_replaced_at_once():
    t = TextTracker()
    t.add(b"\xed\xa0")  # a surrogate's encoding: never valid UTF-8
    assert t.text == "\ufffd\ufffd"
    t.add(b"\xc0")  # never a valid lead byte
    assert t.text == "\ufffd\ufffd\ufffd"


def test_an_interrupted_character_becomes_one_replacement():
    t = TextTracker()
    assert t.add(b"\xe2\x80") == 0
    assert t.add(b"A") == 1  # the two pending bytes become one U+FFFD before "A"
    assert t.text == "\ufffdA"


def test_finish_turns_a_trailing_half_character_into_replacement():
    t = TextTracker()
    t.add(b"ok\xe2")
    assert t.text == "ok"
    t.finish()
    assert t.text == "ok\ufffd"


def test_stop_across_tokens_and_earliest_start():
    t = TextTracker(stop=("cd", "bcx", "d"))
    t.add(b"ab")
    assert not t.stopped and t.visible_end() == 1  # "b" could begin "bcx"
    t.add(b"cd")
    assert t.stopped and t.cut == 2  # "cd" at 2 and "d" at 3 both occur: the earliest


def test_visible_end_holds_a_possible_stop_prefix_only():
    t = TextTracker(stop=("\n\n",))
    t.add(b"line\n")
    assert t.text[: t.visible_end()] == "line"
    t.add(b"next")
    assert t.text[: t.visible_end()] == "line\nnext"


def test_held_prefix_cases():
    assert held_prefix("abc", ["cde"]) == 1
    assert held_prefix("abc", ["bcd", "c"]) == 2
    assert held_prefix("abc", ["abc"]) == 0  # a full match is a stop, not a hold
    assert held_prefix("", ["x"]) == 0
