"""The web page in a real browser: headless Debian Chromium driven by Playwright against a uvicorn
server on 127.0.0.1 (tiny model). Types a key and a prompt, waits for the images, checks that the
budget gauge moves and that the over-budget message appears. Saves the screenshot in docs/results/service/.

Chromium comes from the system (scripts/ensure-system-deps.sh installs Debian's `chromium`); Playwright's
own browser download is never used. Without it this test fails and says how to install it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import add_key
from .tiny import Server, build_env

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("PRIVDIFF_CHROMIUM", "/usr/bin/chromium")
SHOT = Path(__file__).resolve().parents[2] / "docs" / "results" / "service" / "web-page.png"


def test_web_page_generates_moves_the_gauge_and_shows_over_budget(tiny_model_dir, tmp_path):
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install it with `sudo apt-get install -y chromium` "
            "(`make setup` runs scripts/ensure-system-deps.sh), or set PRIVDIFF_CHROMIUM"
        )
    from playwright.sync_api import expect, sync_playwright

    env = build_env(tmp_path, tiny_model_dir, queries=2)
    key = add_key(env, "browser")
    server = Server(env, tmp_path / "server.log", rate=1000.0, burst=1000).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(server.url + "/")
            page.fill("#key", key)
            page.click("#save-key")
            expect(page.locator("#key-status")).to_contain_text("browser")
            before = float(page.locator("#gauge-dataset").get_attribute("data-remaining"))
            page.fill("#prompt", "a pair of sandals")
            page.fill("#n", "8")
            page.click("#go")
            expect(page.locator("#grid img")).to_have_count(8, timeout=60_000)
            expect(page.locator("#cost")).to_contain_text("This request cost ε")
            page.wait_for_function(
                f"Number(document.getElementById('gauge-dataset').dataset.remaining) < {before}", timeout=30_000
            )
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOT), full_page=True)
            page.click("#go")  # the second and last query the budget admits
            expect(page.locator("#message")).to_contain_text("budget is spent", timeout=60_000)
            page.click("#go")
            expect(page.locator("#message")).to_contain_text("Over budget", timeout=60_000)
            expect(page.locator("#message")).to_have_class("over")
            browser.close()
    finally:
        server.kill()
