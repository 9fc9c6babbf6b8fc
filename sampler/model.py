"""Model folders: an ONNX decoder + ``refsampler.json``, the config that describes it.

A model folder holds::

    refsampler.json   {"format": "refsampler-model/1", "name": ..., "onnx": "model.onnx",
                       "tokenizer": "cl100k_base", "context_length": 2048,
                       "eos_token_ids": [100257],
                       "fim": {"prefix": 100258, "middle": 100259, "suffix": 100260} | null,
                       "chat": {"template": ..., "bos_token": ..., "eos_token": ...,
                                "unk_token": ..., "pad_token": ...} | absent}
    model.onnx        a decoder with the HF/Optimum KV-cache I/O names (see sampler.onnx_llama)

``tokenizer`` is a registered name (``cl100k_base``) or an object describing a byte-level BPE
stored in the folder (``{"file": "tokenizer.tiktoken", "sha256", "pattern",
"special_tokens", "vocab_size", "name"}``, written by ``sampler.convert``; see
``sampler.tokenizer.tokenizer_for``). ``chat`` is the model's chat template (Jinja2, as HF
tokenizers keep it) and the special tokens it is rendered with; a model without one has no
``/v1/chat/completions`` (:mod:`sampler.chat_template`). :mod:`sampler.decoder` runs the
graph, with the caches of :mod:`sampler.kvcache`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "ChatConfig",
    "FimTokens",
    "ModelConfig",
    "load_config",
    "file_digest",
    "sha256_file",
]

FORMAT = "refsampler-model/1"
CONFIG_FILE = "refsampler.json"
_HASH_BLOCK = 8 * 2**20


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class FimTokens:
    """Token ids of the fill-in-the-middle markers."""

    prefix: int
    middle: int
    suffix: int


@dataclass(frozen=True)
class ChatConfig:
    """A model's chat template and the special-token texts its rendering is given."""

    template: str
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    source: str | None = None  # where the template came from (/tokenizer_info, the docs)
    unk_token: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A model folder's ``refsampler.json``, plus where it is and the ONNX file's sha256."""

    name: str
    onnx: str
    tokenizer: Any  # a tokenizer name such as "cl100k_base", or a folder tokenizer's object
    context_length: int
    eos_token_ids: tuple[int, ...]
    fim: FimTokens | None
    path: Path
    digest: str
    chat: ChatConfig | None = None
    bos_token_id: int | None = None  # read before every text prompt (Gemma's <bos>)

    @property
    def onnx_path(self) -> Path:
        return self.path / self.onnx


def load_config(folder: str | os.PathLike) -> ModelConfig:
    """Read and check ``folder/refsampler.json``; every error names the offending field.

    >>> load_config("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent/refsampler.json: cannot read model config (file not found)
    """
    folder = Path(folder)
    file = folder / CONFIG_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{file}: cannot read model config (file not found)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read model config ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: must hold a JSON object")
    field = _FieldReader(file, raw)
    if field.get("format", str) != FORMAT:
        raise ValueError(f"{file}: field 'format' must be {FORMAT!r}, got {raw['format']!r}")
    onnx_name = field.get("onnx", str)
    onnx_path = folder / onnx_name
    if not onnx_path.is_file():
        raise ValueError(
            f"{file}: field 'onnx' names {onnx_name!r}, which is not a file in {folder}"
        )
    return ModelConfig(
        name=field.get("name", str),
        onnx=onnx_name,
        tokenizer=field.get("tokenizer", (str, dict)),
        context_length=field.positive_int("context_length"),
        eos_token_ids=field.token_ids("eos_token_ids"),
        fim=field.fim("fim"),
        path=folder,
        digest=file_digest(onnx_path),
        chat=field.chat("chat"),
        bos_token_id=field.optional_token_id("bos_token_id"),
    )


class _FieldReader:
    """Typed access to the fields of one JSON object, with errors naming the field."""

    def __init__(self, file: Path, raw: dict) -> None:
        self.file, self.raw = file, raw

    def error(self, name: str, expected: str) -> ValueError:
        return ValueError(f"{self.file}: field {name!r} must be {expected}, got {self.raw[name]!r}")

    def get(self, name: str, types: type | tuple[type, ...]) -> Any:
        if name not in self.raw:
            raise ValueError(f"{self.file}: missing field {name!r}")
        value = self.raw[name]
        if not isinstance(value, types) or (isinstance(value, str) and not value):
            kinds = types if isinstance(types, tuple) else (types,)
            names: dict[type, str] = {str: "a non-empty string", dict: "an object", list: "a list"}
            raise self.error(name, " or ".join(names.get(k, k.__name__) for k in kinds))
        return value

    def positive_int(self, name: str) -> int:
        value = self.get(name, int)
        if isinstance(value, bool) or value < 1:
            raise self.error(name, "a positive integer")
        return value

    def token_ids(self, name: str) -> tuple[int, ...]:
        value = self.get(name, list)
        if not all(_is_token_id(v) for v in value):
            raise self.error(name, "a list of non-negative integers")
        return tuple(value)

    def optional_token_id(self, name: str) -> int | None:
        value = self.raw.get(name, None)
        if value is not None and not _is_token_id(value):
            raise self.error(name, "null or a non-negative integer")
        return value

    def fim(self, name: str) -> FimTokens | None:
        if self.raw.get(name, None) is None:
            return None  # absent or null: the model has no fill-in-the-middle tokens
        value = self.get(name, dict)
        if set(value) != {"prefix", "middle", "suffix"} or not all(
            _is_token_id(v) for v in value.values()
        ):
            raise self.error(name, "null or {'prefix': id, 'middle': id, 'suffix': id}")
        return FimTokens(**value)

    def chat(self, name: str) -> ChatConfig | None:
        if self.raw.get(name, None) is None:
            return None  # absent or null: the model has no chat template
        value = self.get(name, dict)
        tokens = ("bos_token", "eos_token", "unk_token", "pad_token")
        if (
            not isinstance(value.get("template"), str)
            or not value["template"]
            or not set(value) <= {"template", "source", *tokens}
            or not all(isinstance(value.get(k), (str, type(None))) for k in (*tokens, "source"))
        ):
            raise self.error(
                name,
                "null or {'template': non-empty string, 'bos_token', 'eos_token', "
                "'unk_token', 'pad_token': string or null, 'source': string}",
            )
        return ChatConfig(**value)


def _is_token_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex of a file, cached in ``<file>.sha256`` keyed by size and mtime.

    Hashing SmolLM2's 538 MB takes ~0.4 s (1.35 GB/s measured), so the sidecar saves that on
    every load; it is best effort (a read-only folder just means hashing each time).
    """
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256")
    try:
        cached = json.loads(sidecar.read_text())
        if {k: cached.get(k) for k in key} == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    _write_atomic(sidecar, json.dumps({**key, "sha256": digest}))
    return digest


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in 8 MiB blocks (no cache: see :func:`file_digest`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass
