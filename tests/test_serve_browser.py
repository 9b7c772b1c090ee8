"""The page at `/` in a real headless browser (Debian's chromium driven by Playwright): compare the base and the
edited answers, browse and search the edits, add one with the API key. Skips where no browser is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meg.decoding import greedy_generate
from serve_support import FIRST, LATER, engine_for, running, workspace

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("MEG_CHROMIUM", "/usr/bin/chromium"))
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set MEG_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Exception as err:  # noqa: BLE001 (a browser that cannot start here is a skip, not a failure)
            pytest.skip(f"chromium at {CHROMIUM} does not start: {str(err).splitlines()[0]}")
        yield launched
        launched.close()


def test_the_page_compares_browses_and_adds(browser, fact_gpt2, tokenizer):
    engine = engine_for(workspace(fact_gpt2, tokenizer), fact_gpt2, tokenizer, "browser")
    edited_answer = engine.served.edited.generate([FIRST[1].prompt], max_new_tokens=16)[0]
    base_answer = greedy_generate(fact_gpt2, tokenizer, [FIRST[1].prompt], max_new_tokens=16)[0]
    with running(engine, api_key="k3y") as (url, _):
        page = browser.new_page()
        page.goto(url + "/")
        sync_api.expect(page.locator("#status")).to_contain_text("API key")  # the page loads; the API needs the key
        page.fill("#api-key", "k3y")
        page.dispatch_event("#api-key", "change")
        sync_api.expect(page.locator("#status")).to_contain_text("12 edits")

        page.fill("#prompt", FIRST[1].prompt)
        page.click("#ask")
        sync_api.expect(page.locator("#route-text")).to_contain_text("#1:")
        assert page.text_content("#edited-answer") == edited_answer
        assert page.text_content("#base-answer") == base_answer
        assert FIRST[1].target in page.text_content("#route-text")

        sync_api.expect(page.locator("#edits-table tr")).to_have_count(12)
        page.fill("#search", "darrieux")
        sync_api.expect(page.locator("#edits-table tr")).to_have_count(1)
        sync_api.expect(page.locator("#edits-table")).to_contain_text(FIRST[1].prompt)

        page.fill("#new-prompt", LATER[0].prompt)
        page.fill("#new-target", LATER[0].target)
        page.click("#add")
        sync_api.expect(page.locator("#add-result")).to_contain_text("added edit #12", timeout=120_000)
        sync_api.expect(page.locator("#status")).to_contain_text("13 edits")
        page.fill("#search", LATER[0].prompt[:12])
        sync_api.expect(page.locator("#edits-table")).to_contain_text(LATER[0].target)
