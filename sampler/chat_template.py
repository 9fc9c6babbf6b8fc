"""Messages -> the text a model reads: the model's chat template, rendered as HF does.

A chat template is a Jinja2 template over ``messages`` (a list of ``{"role", "content"}``)
that writes the conversation in the markup the model was tuned on, ending, with
``add_generation_prompt``, where the assistant's reply begins. It comes with the model
(``chat`` in ``refsampler.json``: for a GGUF conversion, its ``tokenizer.chat_template``).
It is rendered the way HF transformers' ``apply_chat_template`` renders it, so the same
messages give the same text: Jinja2's immutable sandbox (a template can read its arguments
but not change them, nor reach Python's internals), ``trim_blocks`` and ``lstrip_blocks``,
the ``loopcontrols`` extension, the ``{% generation %}`` block (rendered as its body), a
``tojson`` filter that keeps non-ASCII text, and the globals ``raise_exception(message)``
and ``strftime_now(format)``. The variables are ``messages``, ``add_generation_prompt``,
``tools`` and ``documents`` (None: this server takes neither), and the special-token texts
``bos_token``, ``eos_token``, ``unk_token``, ``pad_token`` that the model has (a token it
lacks is undefined, as in HF).

The text is then tokenised like a Completions prompt, special tokens included: the markup
the template writes (``<|im_start|>`` ...) becomes its special tokens, as in HF.

>>> from sampler.model import ChatConfig
>>> chat = ChatConfig("{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}"
...                   "{% if add_generation_prompt %}assistant:{% endif %}")
>>> render(chat, [{"role": "user", "content": "Hi"}])
'user: Hi\\nassistant:'
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import RequestError

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

    from .model import ChatConfig

__all__ = ["render", "compile_template", "TemplateUnusable"]


class TemplateUnusable(ValueError):
    """The model's chat template does not compile (a syntax error, an unknown tag)."""


class _Raised(Exception):
    """``raise_exception(message)`` called by a template: the messages are refused."""


def render(
    chat: ChatConfig, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
) -> str:
    """The prompt text of ``messages`` by ``chat``'s template; a template that refuses
    them (``raise_exception``) or fails on them is a 400 naming ``messages``."""
    template = _compiled(chat.template)
    if isinstance(template, TemplateUnusable):
        raise RequestError(
            f"The model's chat template cannot be used: {template}", param="messages"
        )
    tokens = {
        name: value
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if (value := getattr(chat, name)) is not None  # (a token the model lacks: undefined)
    }
    try:
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **tokens,
        )
    except _Raised as err:
        raise RequestError(
            f"Invalid 'messages': the model's chat template refused them: {err}",
            param="messages",
        ) from None
    except Exception as err:  # whatever the template's own code does with these messages
        raise RequestError(
            f"Invalid 'messages': the model's chat template could not render them "
            f"({type(err).__name__}: {str(err)[:200]}).",
            param="messages",
        ) from None


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> jinja2.Template | TemplateUnusable:
    """The compiled template, or why it does not compile (both cached: a broken template
    is not compiled again for each request)."""
    try:
        return compile_template(source)
    except TemplateUnusable as err:
        return err


def compile_template(source: str) -> jinja2.Template:
    """The compiled template; :class:`TemplateUnusable` if it does not compile."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _generation_extension()],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateUnusable(f"line {err.lineno}: {err.message}") from None
    except Exception as err:  # (Jinja's compiler raises Python's SyntaxError, and others)
        raise TemplateUnusable(f"{type(err).__name__}: {str(err)[:200]}") from None


def _raise(message: str) -> None:
    raise _Raised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # (Jinja's own tojson escapes HTML characters and sorts keys: not what chat text wants)
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.cache
def _generation_extension() -> type:
    """``{% generation %} ... {% endgeneration %}``: HF marks the assistant's text with it
    (for training masks); rendering keeps the body as it is."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return Generation
