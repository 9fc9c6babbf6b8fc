"""The playground page at ``/``: its routes, and the page itself in a real headless chromium
(Debian's chromium and chromedriver through Selenium; skipped, saying what to install,
where they are missing). The browser's results are checked against the API's own answers
to the same request."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import chromium, missing, wait
from serving import running

from sampler import Engine
from sampler.fields import RANGES
from sampler.playground import FILES, fields
from sampler.server import ServerConfig, create_app

KEY = "playground-key"
PAGE_FILES = Path(__file__).parent.parent / "sampler" / "playground"


def http(method, url, body=None, key=None):
    """(status, JSON or text, headers) with the standard library."""
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url, data=None if data is None else data.encode(), method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read().decode()
            kind = resp.headers.get("content-type", "")
            return resp.status, (json.loads(text) if "json" in kind else text), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode()), err.headers


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


@pytest.fixture(scope="module")
def base(engine):
    with running(create_app(engine)) as url:
        yield url


# --- the routes (no browser) ----------------------------------------------------------------
def test_page_and_assets_are_served(base):
    status, html, headers = http("GET", base + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for name, kind in FILES.items():
        assert f"/playground/{name}" in html
        status, text, headers = http("GET", f"{base}/playground/{name}")
        assert status == 200 and headers["content-type"] == kind and text
    status, err, _ = http("GET", base + "/playground/../server.py")
    assert status == 404
    status, err, _ = http("GET", base + "/playground/nothing.js")
    assert status == 404 and err["error"]["message"].startswith("Invalid URL")


def test_page_fetches_nothing_from_elsewhere():
    """No CDN, no web fonts, no absolute URL: the page works offline."""
    for path in PAGE_FILES.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


def test_fields_json_is_the_validation_table(base):
    status, data, _ = http("GET", base + "/playground/fields.json")
    assert status == 200 and data["fields"] == fields()
    by_name = {f["name"]: f for f in data["fields"]}
    for name, (default, lo, hi) in RANGES.items():
        if name == "logit_bias":  # (its range is the values': the control is a JSON object)
            continue
        f = by_name[name]
        as_sent = (str(lo), str(hi)) if name == "seed" else (lo, hi)
        assert (f["default"], f["minimum"], f["maximum"]) == (default, *as_sent), name
    # every field the API takes has a control, but the two the page shows on its own
    from sampler.fields import KNOWN_FIELDS

    assert set(by_name) | {"model", "prompt", "stream_options"} == KNOWN_FIELDS


def test_model_card_lists_the_extension(base):
    status, card, _ = http("GET", base + "/v1/models/tiny-random-cl100k")
    ext = card["refsampler"]["extensions"]["sampling_trace"]
    assert ext["minimum"] == 0 and ext["maximum"] == 20 and ext["needs"] == "logprobs"


# --- the page in chromium -------------------------------------------------------------------
needs_browser = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def driver():
    d = chromium()
    yield d
    d.quit()


def open_page(d, url):
    d.get(url + "/")
    wait(lambda: d.find_element("tag name", "body").get_attribute("data-ready") == "true")
    d.get_log("browser")  # (start each test with an empty console log)


def field(d, name):
    return d.find_element("id", "f-" + name)


def fill(d, name, value):
    el = field(d, name)
    if el.tag_name == "select":
        from selenium.webdriver.support.select import Select

        Select(el).select_by_value(value)
        return
    if el.get_attribute("type") == "checkbox":
        if el.is_selected() != bool(value):
            el.click()
        return
    el.clear()
    if value != "":
        el.send_keys(str(value))


def run(d, timeout=60):
    d.find_element("id", "run").click()
    return wait(lambda: _finished(d), timeout)


def _finished(d):
    text = d.find_element("id", "status").text
    return text if re.match(r"(done|error|failed|stopped)", text) else None


def page_texts(d):
    cards = d.find_elements("css selector", "article.choice")
    return [c.find_element("css selector", "pre.text").get_attribute("textContent") for c in cards]


def sent(d):
    """The request the page sent, from its own 'Request JSON' snippet."""
    return json.loads(d.find_element("id", "s-json").get_attribute("textContent"))


def severe(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


@needs_browser
def test_loads_without_console_errors(driver, base):
    open_page(driver, base)
    options = driver.find_elements("css selector", "#model option")
    assert [o.text for o in options] == ["tiny-random-cl100k"]
    for f in fields():  # a control, a label with its range, help and an error slot each
        el = field(driver, f["name"])
        label = driver.find_element("css selector", f"label[for=f-{f['name']}]")
        assert f["name"] in label.text and "default" in label.text
        if f["kind"] in ("integer", "number") and f["name"] != "seed":
            assert el.get_attribute("min") == str(f["minimum"])
    fill(driver, "seed", 11)
    assert run(driver).startswith("done")
    assert severe(driver) == []


@needs_browser
def test_seeded_stream_equals_the_api(driver, base):
    open_page(driver, base)
    prompt = driver.find_element("id", "f-prompt")
    prompt.clear()
    prompt.send_keys("Once upon a time")
    for name, value in {"seed": 1234, "temperature": 0.8, "top_p": 0.95, "max_tokens": 20}.items():
        fill(driver, name, value)
    assert run(driver).startswith("done")
    body = sent(driver)
    assert body["stream"] is True and body["seed"] == 1234
    status, resp, _ = http("POST", base + "/v1/completions", {**body, "stream": False})
    assert status == 200
    assert page_texts(driver) == [c["text"] for c in resp["choices"]]
    spans = driver.find_elements("css selector", "article.choice .tok")
    assert [s.get_attribute("textContent") for s in spans] == [
        t.replace("\n", "\u21b5\n").replace("\t", "\u21e5\t")
        for t in resp["choices"][0]["logprobs"]["tokens"]
    ]


@needs_browser
def test_hover_shows_the_apis_alternatives(driver, base):
    from selenium.webdriver import ActionChains

    open_page(driver, base)
    for name, value in {"seed": 77, "temperature": 0.9, "presence_penalty": 1.2}.items():
        fill(driver, name, value)
    fill(driver, "logit_bias", '{"15": 3}')
    assert run(driver).startswith("done")
    status, resp, _ = http("POST", base + "/v1/completions", {**sent(driver), "stream": False})
    lp = resp["choices"][0]["logprobs"]
    spans = driver.find_elements("css selector", "article.choice .tok")
    for k in (0, 3, len(spans) - 1):
        ActionChains(driver).move_to_element(spans[k]).perform()
        pop = driver.find_element("id", "popover")
        wait(pop.is_displayed)
        rows = pop.find_elements("css selector", "tbody tr")
        shown = {r.get_attribute("data-token"): r for r in rows}
        trace = lp["sampling_trace"][k]
        assert [int(r.get_attribute("data-id")) for r in rows] == trace["ids"]
        for name, value in lp["top_logprobs"][k].items():  # the API's alternatives, raw
            assert float(shown[name].get_attribute("data-raw")) == pytest.approx(value, abs=1e-6)
        for j, r in enumerate(rows):  # processed = the trace's last stage, exactly
            assert float(r.get_attribute("data-processed")) == trace["top_p"][j]
            p = math.exp(trace["raw"][j])
            if p >= 1e-4:  # the percentage shown, as the page rounds it
                shown_p = f"{100 * p:.{3 if p < 0.1 else 2}f}%"
                assert r.find_elements("css selector", "td")[1].text == shown_p
        chosen = pop.find_element("css selector", "tr.chosen")
        assert int(chosen.get_attribute("data-id")) == trace["chosen"]
        bias = {int(i): b for i, b in zip(trace["ids"], trace["bias"])}
        if 15 in bias:
            assert bias[15] == 3.0
    spans[3].click()  # the chart: every traced id, one bar per stage
    chart = driver.find_element("id", "chart")
    wait(chart.is_displayed)
    bars = chart.find_elements("css selector", ".bar-row")
    assert len(bars) == 5 * len(lp["sampling_trace"][3]["ids"])
    assert {b.get_attribute("data-stage") for b in bars} == {
        "raw",
        "logit_bias",
        "penalties",
        "temperature",
        "top_p",
    }


@needs_browser
def test_server_errors_appear_at_their_field(driver, base):
    open_page(driver, base)
    cases = [
        ("temperature", "3", "temperature"),
        ("logit_bias", '{"100256": 2}', "logit_bias"),
        ("stop", "a\nb\nc\nd\ne", "stop"),
    ]
    for name, value, param in cases:
        fill(driver, name, value)
        assert run(driver).startswith("error 400")
        status, err, _ = http("POST", base + "/v1/completions", sent(driver))
        assert status == 400 and err["error"]["param"] == param
        message = driver.find_element("id", "e-" + param)
        assert message.text == err["error"]["message"]
        assert field(driver, param).get_attribute("aria-invalid") == "true"
        fill(driver, name, "")
    # best_of > n cannot stream: the server says so at best_of
    fill(driver, "best_of", 3)
    assert run(driver).startswith("error 400")
    assert "cannot stream" in driver.find_element("id", "e-best_of").text
    # a value the page cannot even send (not JSON) is caught on the page, at its field
    fill(driver, "best_of", "")
    fill(driver, "logit_bias", "{15: 2")
    driver.find_element("id", "run").click()
    assert "not valid JSON" in wait(lambda: driver.find_element("id", "e-logit_bias").text)
    fill(driver, "logit_bias", "")
    assert run(driver).startswith("done")
    assert driver.find_element("id", "e-logit_bias").text == ""


@needs_browser
def test_n_side_by_side_and_best_of_candidates(driver, base):
    open_page(driver, base)
    fill(driver, "n", 2)
    fill(driver, "seed", 5)
    assert run(driver).startswith("done")
    cards = driver.find_elements("css selector", "article.choice")
    assert len(cards) == 2 and cards[0].location["y"] == cards[1].location["y"]
    assert cards[0].location["x"] < cards[1].location["x"]
    fill(driver, "stream", False)
    fill(driver, "best_of", 3)
    assert run(driver).startswith("done")
    status, resp, _ = http("POST", base + "/v1/completions", sent(driver))
    assert page_texts(driver) == [c["text"] for c in resp["choices"]]
    table = driver.find_element("id", "candidates")
    rows = table.find_elements("css selector", "tbody tr")
    assert len(rows) == 3
    for row, cand in zip(rows, resp["candidates"]):
        cells = [td.text for td in row.find_elements("css selector", "td")]
        assert float(cells[2]) == pytest.approx(cand["mean_logprob"], abs=1e-4)
        assert cells[5] == ("not returned" if cand["index"] is None else f"choice {cand['index']}")


@needs_browser
def test_echo_shows_each_prompt_tokens_logprob(driver, base, engine):
    from selenium.webdriver import ActionChains

    open_page(driver, base)
    fill(driver, "echo", True)
    fill(driver, "seed", 3)
    fill(driver, "max_tokens", 4)
    assert run(driver).startswith("done")
    status, resp, _ = http("POST", base + "/v1/completions", {**sent(driver), "stream": False})
    lp = resp["choices"][0]["logprobs"]
    n_prompt = len(engine.tokenizer.encode(sent(driver)["prompt"]))
    prompt_spans = driver.find_elements("css selector", ".tok.prompt")
    assert len(prompt_spans) == n_prompt
    assert "noprob" in prompt_spans[0].get_attribute("class")
    ActionChains(driver).move_to_element(prompt_spans[1]).perform()
    pop = driver.find_element("id", "popover")
    wait(pop.is_displayed)
    rows = pop.find_elements("css selector", "tbody tr")
    got = {r.get_attribute("data-token"): float(r.get_attribute("data-raw")) for r in rows}
    assert got == pytest.approx(lp["top_logprobs"][1])
    assert page_texts(driver) == [resp["choices"][0]["text"]]


@needs_browser
def test_keyboard_tab_to_tokens_and_escape(driver, base):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, base)
    fill(driver, "seed", 8)
    assert run(driver).startswith("done")
    driver.find_element("id", "f-prompt").click()
    active = None
    for _ in range(80):  # Tab through the controls and buttons to the first token
        driver.switch_to.active_element.send_keys(Keys.TAB)
        active = driver.switch_to.active_element
        if "tok" in (active.get_attribute("class") or ""):
            break
    assert active is not None and "tok" in active.get_attribute("class")
    pop = driver.find_element("id", "popover")
    wait(pop.is_displayed)
    active.send_keys(Keys.ESCAPE)
    wait(lambda: not pop.is_displayed())
    active.send_keys(Keys.ENTER)
    wait(driver.find_element("id", "chart").is_displayed)
    active.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element.get_attribute("data-i") == "1"
    # a focused control shows a visible focus ring
    run_button = driver.find_element("id", "run")
    driver.execute_script("arguments[0].focus()", run_button)
    assert run_button.value_of_css_property("outline-style") != "none"


@needs_browser
def test_snippets_reproduce_the_result(driver, base, tmp_path):
    open_page(driver, base)
    for name, value in {"seed": 4242, "temperature": 0.6, "max_tokens": 12}.items():
        fill(driver, name, value)
    fill(driver, "stop", "\\n")
    fill(driver, "logprobs_mode", "processed")
    assert run(driver).startswith("done")
    texts = page_texts(driver)
    code = driver.find_element("id", "s-python").get_attribute("textContent")
    assert "seed=4242" in code and "extra_body=" in code
    script = tmp_path / "snippet.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "".join(t + "\n" for t in texts)
    curl = driver.find_element("id", "s-curl").get_attribute("textContent")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the curl snippet was not run")
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    streamed: dict[int, str] = {}
    for line in out.stdout.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                streamed[c["index"]] = streamed.get(c["index"], "") + c["text"]
    assert [streamed[i] for i in sorted(streamed)] == texts


@needs_browser
def test_stop_cancels_the_request(driver, base, engine):
    open_page(driver, base)
    fill(driver, "max_tokens", 2000)
    fill(driver, "seed", 1)
    fill(driver, "logit_bias", json.dumps({str(i): -100 for i in engine.end_ids}))
    driver.find_element("id", "run").click()
    wait(lambda: len(driver.find_elements("css selector", ".tok")) > 3)
    driver.find_element("id", "stop").click()
    assert wait(lambda: _finished(driver)) == "stopped"
    n = len(driver.find_elements("css selector", ".tok"))
    assert n < 2000

    def idle():
        status, health, _ = http("GET", base + "/health")
        return all(load["running"] == 0 for load in health["models"].values())

    wait(idle)
    assert driver.find_element("id", "run").is_enabled()


CONTRAST = """
function rgb(c) { const m = c.match(/[\\d.]+/g).map(Number); return m; }
function lum([r, g, b]) {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}
function background(node) {
  for (; node; node = node.parentElement) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c;
  }
  return [255, 255, 255];
}
return [...document.querySelectorAll(arguments[0])].filter((n) => n.offsetParent).map((n) => {
  const a = lum(rgb(getComputedStyle(n).color)), b = lum(background(n));
  return [n.id || n.className || n.tagName, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
});
"""


@needs_browser
def test_text_contrast(driver, base):
    """WCAG AA: text at least 4.5:1 against what is behind it, tokens of every shade too."""
    open_page(driver, base)
    fill(driver, "seed", 12)
    fill(driver, "temperature", 1.5)
    selector = "label, .range, .help, .error, button, #status, .tok, .legend span, h1, h2, pre"
    fill(driver, "top_p", "9")  # an error message
    assert run(driver).startswith("error")
    ratios = driver.execute_script(CONTRAST, ".error")
    assert len(ratios) == 1
    fill(driver, "top_p", "")
    fill(driver, "echo", True)
    assert run(driver).startswith("done")
    ratios += driver.execute_script(CONTRAST, selector)
    assert len(ratios) > 50
    low = [(name, round(r, 2)) for name, r in ratios if r < 4.5]
    assert low == []


@needs_browser
def test_phone_width(base):
    d = chromium(390, 844, phone=True)
    try:
        open_page(d, base)
        assert d.execute_script("return window.innerWidth") == 390
        fill(d, "seed", 2)
        fill(d, "n", 2)
        assert run(d).startswith("done")
        overflow = d.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        cards = d.find_elements("css selector", "article.choice")
        assert cards[0].location["x"] == cards[1].location["x"]  # stacked, not side by side
    finally:
        d.quit()


@needs_browser
def test_api_key_is_asked_for_and_never_in_a_url(engine):
    app = create_app(engine, ServerConfig(api_key=KEY))
    d = chromium()
    try:
        with running(app) as url:
            open_page(d, url)
            box = d.find_element("id", "key-box")
            assert box.is_displayed()
            key = d.find_element("id", "api-key")
            assert key.get_attribute("type") == "password"
            key.send_keys("wrong-key\n")
            wait(lambda: "Incorrect API key" in d.find_element("id", "key-error").text)
            d.find_element("id", "api-key").send_keys(KEY + "\n")
            wait(lambda: not box.is_displayed())
            fill(d, "seed", 6)
            assert run(d).startswith("done")
            status, resp, _ = http(
                "POST", url + "/v1/completions", {**sent(d), "stream": False}, key=KEY
            )
            assert page_texts(d) == [c["text"] for c in resp["choices"]]
            urls = d.execute_script(
                "return [location.href, ...performance.getEntries().map(e => e.name)]"
            )
            assert urls and not any(KEY in u for u in urls)
            snippets = d.find_element("id", "snippets").get_attribute("textContent")
            assert KEY not in snippets and "OPENAI_API_KEY" in snippets
    finally:
        d.quit()


@needs_browser
def test_screenshot(engine, tmp_path):
    """The picture in the README and the docs is taken by this code (``make screenshot``
    runs it with the default model); here with the tiny model, into a temporary file."""
    from screenshot import take

    out = tmp_path / "playground.png"
    take(engine, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
