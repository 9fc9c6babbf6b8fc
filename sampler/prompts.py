"""Prompts as the model reads them (spec §2): the four forms, token ids, FIM wrapping,
the end-of-text token an empty prompt reads, and the context-length check (§1.2).

>>> from sampler.params import ModelInfo
>>> from sampler.tokenizer import get_tokenizer
>>> info = ModelInfo("m", get_tokenizer("cl100k_base"), context_length=64, end_ids=(100257,))
>>> [prompt_tokens(p, info, None).tokens for p in raw_prompts({"prompt": ["Hi", ""]})]
[(13347,), (100257,)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import RequestError
from .tokenizer import Tokenizer, UnrepresentableText
from .values import empty_array, is_int, show, type_error, valid_text

if TYPE_CHECKING:
    from .fields import ModelInfo


@dataclass(frozen=True)
class Prompt:
    """One prompt as the model reads it and as the response shows it."""

    tokens: tuple[int, ...]  # what the model reads (FIM-wrapped; [eot] for an empty one)
    shown: tuple[int, ...]  # the prompt's own tokens: echoed and scored
    text: str  # the prompt text (echo, text_offset)
    counted: int  # its share of usage.prompt_tokens
    lead: int = 0  # where ``shown`` starts in ``tokens`` (1 after a BOS; FIM: unused)


_PROMPT_TYPES = (
    "a string, an array of strings, an array of integers, or an array of arrays of integers"
)


def raw_prompts(body: Mapping) -> list[str | list[int]]:
    """The prompts as given: strings or token-id lists (form checked, ids not yet)."""
    value = body.get("prompt")
    if value is None:
        raise RequestError(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise type_error("prompt", _PROMPT_TYPES, value)
    if not value:
        raise empty_array("prompt")
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(is_int(v) for v in value):
        return [list(value)]
    if all(isinstance(v, (list, tuple)) for v in value):
        for tokens in value:
            if not tokens:
                raise empty_array("prompt")
            if not all(is_int(t) for t in tokens):
                raise type_error("prompt", _PROMPT_TYPES, value)
        return [list(v) for v in value]
    raise type_error("prompt", _PROMPT_TYPES, value)


def _encode(param: str, text: str, tok: Tokenizer) -> list[int]:
    """The text's tokens; text holding a byte that no token holds names ``param``."""
    try:
        return tok.encode(text)
    except UnrepresentableText as err:
        raise RequestError(
            f"Invalid '{param}': {err}, so the model cannot read it. Remove or replace "
            "that character.",
            param=param,
            code="invalid_value",
        ) from None


def prompt_tokens(raw: str | list[int], info: ModelInfo, suffix: str | None) -> Prompt:
    """The prompt as the model reads it. A model with a BOS token (``info.bos_id``, Gemma's
    ``<bos>``) reads it before a text prompt, as llama.cpp and HF tokenizers put it there;
    it is not part of the prompt: not echoed, scored or counted (as the end-of-text token
    an empty prompt reads). Token-id prompts are read exactly as given."""
    tok = info.tokenizer
    if isinstance(raw, str):
        text = valid_text("prompt", raw)
        shown = tuple(_encode("prompt", text, tok))
        bos: tuple[int, ...] = () if info.bos_id is None else (info.bos_id,)
    else:
        bos = ()
        check_token_ids("prompt", raw, tok)
        shown = tuple(int(t) for t in raw)
        text = tok.decode_bytes(shown).decode("utf-8", "replace")
    if suffix is not None:
        assert info.fim is not None
        prefix_id, middle_id, suffix_id = info.fim
        tokens = (prefix_id, *shown, suffix_id, *_encode("suffix", suffix, tok), middle_id)
        return Prompt(tokens=bos + tokens, shown=shown, text=text, counted=len(tokens))
    if not shown:  # conditioned on BOS or end-of-text, which is neither echoed nor counted
        return Prompt(tokens=bos or (info.end_ids[0],), shown=(), text=text, counted=0)
    return Prompt(tokens=bos + shown, shown=shown, text=text, counted=len(shown), lead=len(bos))


def check_token_ids(param: str, ids: list, tok: Tokenizer) -> None:
    """Every integer of ``ids`` is a token of ``tok``, or a 400 naming ``param``."""
    for t in ids:
        if not tok.is_token(int(t)):
            raise RequestError(
                f"Invalid '{param}': {show(t)} is not a token id of the model's tokenizer "
                f"({tok.name}, ids 0 to {tok.max_id}, some of which are not tokens).",
                param=param,
                code="invalid_value",
            )


def check_context(prompts: tuple[Prompt, ...], max_tokens: int, info: ModelInfo) -> None:
    for p in prompts:
        if len(p.tokens) + max_tokens > info.context_length:
            raise RequestError(
                f"This model's maximum context length is {info.context_length} tokens, "
                f"however you requested {len(p.tokens) + max_tokens} tokens "
                f"({len(p.tokens)} in your prompt; {max_tokens} for the completion). "
                "Please reduce your prompt; or completion length."
            )
