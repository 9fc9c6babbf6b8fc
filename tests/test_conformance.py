"""The conformance kit: its arithmetic by hand, our server passing it in full under the strict
profile, and every mutant server (one broken rule each) failing the checks of its rule and
only those."""

from __future__ import annotations

import json
import math

import pytest
from mutants import MUTANTS, Mutant, serving

from sampler.conformance import CHECKS, run
from sampler.conformance.client import parse_events, parse_json
from sampler.conformance.stats import bernoulli_kl, binomial_outside


# --- by hand --------------------------------------------------------------------------------
def test_bernoulli_kl_by_hand():
    # KL(0.6 || 0.5) = 0.6 ln 1.2 + 0.4 ln 0.8
    assert bernoulli_kl(0.6, 0.5) == pytest.approx(0.6 * math.log(1.2) + 0.4 * math.log(0.8))
    assert bernoulli_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert bernoulli_kl(0.5, 0.0) == math.inf


def test_chernoff_bound_covers_the_exact_tail():
    # exact P(X >= 70) for Binomial(100, 0.5), summed by hand with math.comb
    exact = sum(math.comb(100, k) for k in range(70, 101)) / 2**100
    bound = binomial_outside(70, 100, 0.5, 0.5)
    assert exact <= bound < 1e-3
    assert binomial_outside(30, 100, 0.5, 0.5) == pytest.approx(bound)  # the mirror image
    assert binomial_outside(50, 100, 0.4, 0.6) == 1.0


def test_strict_json_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        parse_json('{"a": NaN}')
    assert parse_json('{"a": -9999.0}') == {"a": -9999.0}


def test_events_framing():
    evs, problem = parse_events('data: {"a": 1}\n\ndata: [DONE]\n\n')
    assert evs == [{"a": 1}, "[DONE]"] and problem is None
    _, problem = parse_events('data: {"a": 1}\n\ndata: [DONE]')
    assert "blank line" in problem
    _, problem = parse_events("event: x\ndata: {}\n\n")
    assert "not data" in problem


def test_every_check_is_described():
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names)) >= 55
    for c in CHECKS:
        assert c.rule and c.how and c.section in {str(i) for i in range(1, 11)}, c.name
    assert {c.section for c in CHECKS} == {str(i) for i in range(1, 11)}


# --- against our server ---------------------------------------------------------------------------
MODEL = "tiny-random-cl100k"


def _fails(report) -> dict[str, str]:
    return {r.check: f"{r.result}: {r.evidence}" for r in report.results if r.result != "pass"}


def test_our_server_passes_strict(tiny_model_dir):
    with serving(None) as url:
        report = run(url, MODEL, profile="strict", seed=3)
    assert _fails(report) == {}
    assert len(report.results) == len(CHECKS)
    assert report.requests < 2000
    doc = report.to_json()
    assert {c["result"] for c in doc["checks"]} == {"pass"}
    assert set(doc["checks"][0]) >= {"section", "check", "tag", "result", "evidence", "request"}
    assert json.loads(json.dumps(doc)) == doc
    assert report.markdown().count("\n| ") == len(CHECKS)  # the rows after the header


def test_openai_profile_and_only(tiny_model_dir):
    with serving(None) as url:
        report = run(url, MODEL, profile="openai", only=["9"])
    assert {r.section for r in report.results} == {"9"}
    assert {r.tag for r in report.results} == {"OpenAI"}
    assert report.ok


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_kit_catches_mutant(mutant: Mutant, tiny_model_dir):
    with serving(mutant) as url:
        report = run(url, MODEL, profile="strict", seed=5)
    failed = _fails(report)
    assert mutant.must <= set(failed), f"not caught: {mutant.must - set(failed)}; {failed}"
    stray = set(failed) - mutant.must - mutant.may
    assert not stray, {k: failed[k] for k in stray}
    for name in mutant.must:  # a rule broken is a fail with its evidence, not an error
        r = next(r for r in report.results if r.check == name)
        assert r.result == "fail" and r.evidence, (name, r)


def test_unreachable_server_is_an_error_everywhere():
    report = run("http://127.0.0.1:9/v1", "m", only=["1"], timeout=2)
    assert {r.result for r in report.results} == {"error"}
    assert not report.ok


def test_command_line(tiny_model_dir, tmp_path, capsys):
    from sampler.cli import main

    out_json, out_md = tmp_path / "k.json", tmp_path / "k.md"
    with serving(None) as url:
        code = main(
            [
                "conformance",
                url,
                "--model",
                MODEL,
                "--only",
                "1",
                "10",
                "--json",
                str(out_json),
                "--markdown",
                str(out_md),
                "--seed",
                "1",
            ]
        )
    assert code == 0
    shown = capsys.readouterr().out
    assert "§1  out_of_range" in shown and " 0 fail," in shown
    doc = json.loads(out_json.read_text())
    assert doc["server"]["models"] == [MODEL]
    assert {c["section"] for c in doc["checks"]} == {"1", "10"}
    assert out_md.read_text().startswith("| § | check |")


def test_command_line_exit_status(tiny_model_dir, capsys):
    from sampler.cli import main

    usage = next(m for m in MUTANTS if m.name == "usage counts the prompt per choice")
    with serving(usage) as url:
        assert main(["conformance", url, "--model", MODEL, "--only", "2"]) == 1
    assert "prompt_tokens_once" in capsys.readouterr().out
    assert main(["conformance", "http://127.0.0.1:9/v1", "--model", "m", "--only", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["conformance", "http://127.0.0.1:9/v1", "--model", "m", "--only", "11"]) == 2


def test_docs_list_every_check_and_mutant():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "conformance.md").read_text()
    table = text[text.index("## The checks") : text.index("## The kit can fail")]
    listed = [ln.split("`")[1] for ln in table.splitlines() if ln.startswith("| ") and "`" in ln]
    assert sorted(listed) == sorted(c.name for c in CHECKS)
    proof = text[text.index("## The kit can fail") :]
    for m in MUTANTS:
        assert f"| {m.name} |" in proof, m.name
