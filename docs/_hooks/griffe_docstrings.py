"""Griffe extension: the package's reST-flavoured docstrings, rendered as Markdown.

The docstrings are written for ``help()`` and doctest (``>>>`` examples, ``::`` literal
blocks, Sphinx roles such as :func:`x`). mkdocstrings reads Markdown, so before rendering:

- each ``>>>`` example (up to the next blank line) becomes a fenced ``pycon`` block, so its
  output is shown as code, not parsed as Markdown (``[0, 2, 3]`` is not a link);
- a paragraph ending in ``::`` ends in ``:`` (the indented block after it is already code);
- ``:func:`name``` and the other roles become links to the API reference when ``name``
  resolves to a documented public object, else inline code.

The docstrings themselves are not changed: doctest runs them as written.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(~?)([\w.]+)`")


def _fence_examples(text: str) -> str:
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.append(f"{indent}```pycon")
            out.extend(indent + b if b else b for b in block)
            out.append(f"{indent}```")
            continue
        if stripped.endswith("::") and not stripped.startswith((">>>", "...")):
            line = line[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class MarkdownDocstrings(Extension):
    def on_object(self, *, obj: Object, loader: Any, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = _fence_examples(obj.docstring.value)

        def resolve(name: str) -> str | None:
            module = obj.module.path if hasattr(obj, "module") else ""
            scopes = [name, f"{module}.{name}", f"{obj.path}.{name}", f"sampler.{name}"]
            for path in scopes:
                try:
                    target = loader.modules_collection[path]
                except (KeyError, ValueError, AttributeError):
                    continue
                if any(part.startswith("_") for part in path.split(".")):
                    return None  # private: not in the reference
                if target.is_module or target.is_class or target.docstring is not None:
                    return path  # rendered (members without a docstring are not)
                return None
            return None

        def role(m: re.Match[str]) -> str:
            short, name = m[1] == "~", m[2]
            label = name.rsplit(".", 1)[-1] if short else name
            target = resolve(name)
            return f"[`{label}`][{target}]" if target else f"`{label}`"

        obj.docstring.value = _ROLE.sub(role, text)
