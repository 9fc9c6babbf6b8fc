"""The playground's screenshot (``make screenshot`` writes ``docs/playground.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from browser import chromium, wait
from serving import running

from sampler.server import create_app

PROMPT = "The three primary colours are"


def take(engine: Any, out: Path, width: int = 1280, height: int = 900) -> None:
    """Serve ``engine``, run a seeded request with two choices on the page, open one
    token's alternatives and chart, and save the page as a PNG at ``out``."""
    from selenium.webdriver import ActionChains

    d = chromium(width, height)
    try:
        with running(create_app(engine)) as url:
            d.get(url + "/")
            wait(lambda: d.find_element("tag name", "body").get_attribute("data-ready"))
            prompt = d.find_element("id", "f-prompt")
            prompt.clear()
            prompt.send_keys(PROMPT)
            for name, value in {"seed": 7, "n": 2, "temperature": 0.8, "top_p": 0.9}.items():
                box = d.find_element("id", "f-" + name)
                box.clear()
                box.send_keys(str(value))
            d.find_element("id", "run").click()
            wait(lambda: d.find_element("id", "status").text.startswith("done"), 300)
            spans = d.find_elements("css selector", "#choice-0 .tok")
            pick = spans[min(2, len(spans) - 1)]
            pick.click()
            d.execute_script("window.scrollTo(0, 0)")
            ActionChains(d).move_to_element(pick).perform()
            wait(d.find_element("id", "popover").is_displayed)
            out.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(out))
    finally:
        d.quit()


def main() -> None:
    import argparse

    from sampler import Engine

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--model", default=None, help="default: the default model")
    args = parser.parse_args()
    take(Engine.load(args.model), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
