"""MkDocs hook: the notebooks become pages, and pages found on disk join the nav.

- Each ``notebooks/*.ipynb`` is rendered, with its committed outputs, into the page
  ``notebooks/<name>.md`` (PNG outputs become image files next to it). Nothing is executed
  here: ``tests/test_notebooks.py`` executes them, ``make notebooks`` refreshes the outputs.
- Links are written for the repository (so they work on a forge) and rewritten for the
  site: from a notebook, ``../docs/X.md`` -> ``../X.md`` and ``N.ipynb`` -> ``N.md``; from a
  page, ``../notebooks/N.ipynb`` -> the notebook's page.
- ``docs/adapters/*.md`` pages, and the notebook pages, are added to the nav under their
  sections, so a new page needs no edit of ``mkdocs.yml``.

Only nbformat is needed (no Jupyter, no network).
"""

from __future__ import annotations

import base64
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SITE_DIR = "notebooks"  # where the notebook pages live in the site


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "Notebook"


def _nav_title(path: Path) -> str:
    """The notebook's heading up to its first colon: "logprobs and echo: scoring text"."""
    import nbformat

    return _title(nbformat.read(path, as_version=4)).split(":")[0]


def on_config(config, **kwargs):
    nav = config.nav
    if nav is None:
        return config
    docs = Path(config.docs_dir)

    def section(name: str, pages: list) -> None:
        if not pages:  # nothing on disk: drop the placeholder rather than show an empty section
            nav[:] = [i for i in nav if not (isinstance(i, dict) and i.get(name) == [])]
            return
        for item in nav:
            if isinstance(item, dict) and name in item and not item[name]:
                item[name] = pages  # an empty placeholder in mkdocs.yml
                return
        nav.append({name: pages})

    section("Notebooks", [{_nav_title(p): f"{SITE_DIR}/{p.stem}.md"} for p in _notebooks()])
    adapters = sorted(docs.glob("adapters/*.md"), key=lambda p: (p.stem != "index", p.stem))
    section("Adapters", [p.relative_to(docs).as_posix() for p in adapters])
    return config


_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _notebook_link(target: str) -> str:
    """A link written in a notebook (relative to notebooks/), as the site needs it."""
    path, sep, anchor = target.partition("#")
    if "://" in path or path.startswith("mailto:"):
        return target
    if path.startswith("../docs/"):
        path = "../" + path[len("../docs/") :]
    elif path.endswith(".ipynb") and "/" not in path:
        path = path[: -len(".ipynb")] + ".md"
    return path + sep + anchor


def _render(path: Path, image_files: list[tuple[str, bytes]]) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    out = [
        f"<!-- generated from notebooks/{path.name} by docs/_hooks/notebooks.py -->\n",
    ]
    first_heading_done = False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            text = _LINK.sub(lambda m: m[1] + _notebook_link(m[2]) + m[3], cell.source)
            out.append(text + "\n")
            if not first_heading_done and text.lstrip().startswith("# "):
                first_heading_done = True
                out.append(
                    f'!!! note "A notebook"\n    This page is `notebooks/{path.name}` in the '
                    "repository, shown with the outputs it was committed with. CI re-runs it "
                    "on every change (`make test`); `make notebooks` refreshes the outputs.\n"
                )
        elif cell.cell_type == "code":
            out.append("```python\n" + cell.source.rstrip() + "\n```\n")
            for j, o in enumerate(cell.get("outputs", [])):
                out.append(_output(o, f"{path.stem}_files/cell{i:02d}_{j}", image_files))
    return "\n".join(x for x in out if x)


def _output(o, stem: str, image_files: list[tuple[str, bytes]]) -> str:
    kind = o.get("output_type")
    if kind == "stream":
        return _text_block(o.get("text", ""))
    if kind in ("execute_result", "display_data"):
        data = o.get("data", {})
        if "image/png" in data:
            name = f"{stem}.png"
            image_files.append((name, base64.b64decode(data["image/png"])))
            return f"![output]({name})\n"
        if "text/plain" in data:
            return _text_block(data["text/plain"])
        return ""
    if kind == "error":
        return _text_block(f"{o.get('ename')}: {o.get('evalue')}")
    return ""


def _text_block(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip("\n")
    if not text:
        return ""
    fence = "````" if "```" in text else "```"
    return f'{fence}text title="output"\n{text}\n{fence}\n'


def on_files(files: Files, config, **kwargs) -> Files:
    for path in _notebooks():
        images: list[tuple[str, bytes]] = []
        content = _render(path, images)
        files.append(File.generated(config, f"{SITE_DIR}/{path.stem}.md", content=content))
        for name, data in images:
            files.append(File.generated(config, f"{SITE_DIR}/{name}", content=data))
    return files


def _page_link(target: str, page_src: str) -> str:
    """A link to ``../notebooks/N.ipynb`` (as the repository has it) from a docs page."""
    path, sep, anchor = target.partition("#")
    if not path.endswith(".ipynb") or "://" in path:
        return target
    here = posixpath.dirname(page_src)  # within docs/
    real = posixpath.normpath(posixpath.join("docs", here, path))  # within the repository
    if not real.startswith("notebooks/"):
        return target
    page = f"{SITE_DIR}/{posixpath.basename(real)[: -len('.ipynb')]}.md"
    return posixpath.relpath(page, here or ".") + sep + anchor


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri.startswith(f"{SITE_DIR}/"):
        return markdown
    return _LINK.sub(lambda m: m[1] + _page_link(m[2], page.file.src_uri) + m[3], markdown)
