"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright.

The model is the tiny random one from bench/tiny.py, so stories are gibberish; we check behaviour
(streaming, escaping, errors, regenerate, API key), not prose.
"""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import bentoml_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Playwright cannot download its own browsers here: use the system one, quiet and offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 30_000  # the CPU may be busy (training runs beside the tests): generous but bounded
XSS_NAME = "<img src=x onerror=alert(1)>"
API_KEY = "test-secret-key"

# Installed before the page's own script: records the story's length whenever it changes while
# data-state is "streaming" (so a test can tell streamed text from the final replacement), and
# any Content-Security-Policy violation.
RECORD_GROWTH = """
window.__growth = [];
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));
document.addEventListener("DOMContentLoaded", () => {
  const story = document.getElementById("story");
  new MutationObserver(() => {
    if (story.dataset.state === "streaming") window.__growth.push(story.textContent.length);
  }).observe(story, {childList: true, subtree: true, characterData: true});
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh page on a server, with its console errors and dialogs recorded."""

    def __init__(self, browser, base_url: str, **context_args):
        self.context = browser.new_context(**context_args)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.add_init_script(RECORD_GROWTH)
        self.page.goto(base_url + "/")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def generate(self, name: str, description: str, submit: str = "click") -> None:
        """Fill the form and submit it: "click" Generate, "enter" in the name field, or
        "ctrl+enter" in the description. Short stories keep the tests quick on a busy CPU."""
        self.page.click(".options summary")
        self.page.select_option("#length", "short")
        self.page.fill("#name", name)
        self.page.fill("#description", description)
        if submit == "enter":
            self.page.press("#name", "Enter")
        elif submit == "ctrl+enter":
            self.page.press("#description", "Control+Enter")
        else:
            self.page.click("#generate")

    def wait_state(self, state: str) -> None:
        self.page.wait_for_selector(f'#story[data-state="{state}"]')

    def seed(self) -> int:
        return int(re.search(r"seed (\d+)", self.page.text_content("#meta")).group(1))


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    # Clipboard permissions let the Copy button take its main path (navigator.clipboard).
    p = Page(browser, server, viewport={"width": 1280, "height": 800},
             permissions=["clipboard-read", "clipboard-write"])
    yield p
    p.context.close()


def test_loads_without_console_errors_or_csp_violations(page):
    page.page.wait_for_selector("#server-status.ok")  # the app script ran and reached /status
    assert page.errors == []
    assert page.page.evaluate("window.__csp") == []
    for element in ("#name", "#description", "#generate", "#story"):
        assert page.page.is_visible(element)
    assert page.page.get_attribute("#story", "data-state") == "idle"
    assert page.page.get_attribute("#story", "aria-live") == "polite"
    assert page.page.is_hidden("#stop") and page.page.is_hidden("#api-key")


def test_streams_then_shows_final_story_and_meta(page):
    page.generate("Kaylon", "An empire of androids that killed their biological creators.")
    page.wait_state("done")
    growth = page.page.evaluate("window.__growth")
    assert any(n > 0 for n in growth), "no text appeared while streaming"
    assert page.page.text_content("#story").strip()
    assert re.search(r"\d+ tokens", page.page.text_content("#meta"))
    assert page.page.is_enabled("#generate") and page.page.is_hidden("#stop")
    page.page.click("#copy")
    page.page.wait_for_selector("#copy:has-text('Copied')")
    assert page.page.evaluate("navigator.clipboard.readText()") == page.page.evaluate(
        "[...document.querySelectorAll('#story p')].map(p => p.textContent).join('\\n\\n')")
    assert page.errors == []


def test_markup_in_a_name_shows_as_text(page):
    page.generate(XSS_NAME, "A <b>bold</b> stranger.", submit="enter")
    page.wait_state("done")
    assert XSS_NAME in page.page.text_content("#story")
    assert page.page.locator("#story img, #story b").count() == 0
    assert page.dialogs == []


def test_blank_name_is_refused_with_a_field_error(page):
    page.generate("   ", "Someone with no name.")
    page.page.wait_for_selector("#name-error:visible")
    assert page.page.get_attribute("#name", "aria-invalid") == "true"
    assert "name-error" in page.page.get_attribute("#name", "aria-describedby")
    assert page.page.is_visible("#error")
    assert page.page.get_attribute("#story", "data-state") != "done"

    # An error only the server finds (a length over its limit) lands next to its field too.
    page.page.fill("#name", "Aldric")
    page.page.evaluate("""() => {
        const select = document.getElementById('length');
        select.add(new Option('Epic', 'epic'));
        select.value = 'epic';
    }""")
    page.page.click("#generate")
    page.page.wait_for_selector("#length-error:visible")
    assert page.page.get_attribute("#length", "aria-invalid") == "true"
    assert "length" in page.page.text_content("#error")
    assert page.page.get_attribute("#story", "data-state") == "error"
    page.page.click("#error-dismiss")
    assert page.page.is_hidden("#error")


def test_regenerate_gives_a_new_seed(page):
    page.generate("Maren Vell", "A lighthouse keeper who bargains with the drowned.",
                  submit="ctrl+enter")
    page.wait_state("done")
    first = page.seed()
    page.page.click("#regenerate")
    page.page.wait_for_function(
        "seed => document.getElementById('story').dataset.state === 'done'"
        " && !document.getElementById('meta').textContent.includes('seed ' + seed)", arg=first)
    assert page.seed() != first
    assert page.page.input_value("#name") == "Maren Vell"


def test_fits_a_phone_screen(browser, server):
    p = Page(browser, server, viewport={"width": 375, "height": 800}, is_mobile=True)
    try:
        p.generate("Kaylon", "An empire of androids that killed their biological creators.")
        p.wait_state("done")
        assert p.page.evaluate("document.documentElement.scrollWidth") <= 375
        assert p.errors == []
    finally:
        p.context.close()


@pytest.fixture(scope="module")
def keyed_server(tiny_model) -> Iterator[str]:
    with bentoml_serve(str(tiny_model), env={"BACKSTORY_API_KEY": API_KEY}) as url:
        yield url


def test_api_key_is_asked_for_after_a_401(browser, keyed_server):
    p = Page(browser, keyed_server)
    try:
        assert p.page.is_hidden("#api-key")
        p.generate("Oskar Thrane", "A cartographer who maps places that do not exist yet.")
        p.page.wait_for_selector("#api-key:visible")
        assert "API key" in p.page.text_content("#error")
        p.wait_state("error")
        p.page.fill("#api-key", API_KEY)
        p.page.click("#generate")
        p.wait_state("done")
        assert p.page.text_content("#story").strip()
        assert p.page.evaluate("sessionStorage.getItem('backstory-api-key')") == API_KEY
    finally:
        p.context.close()


def test_api_docs_render_offline(browser, server):
    """Swagger UI comes from our own server: the test browser has no route to any CDN."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/docs")
        page.wait_for_selector(".swagger-ui .information-container .title")
        assert "Backstory Generator" in page.text_content(".swagger-ui .title")
        page.wait_for_selector(".opblock-summary-path[data-path=\"/api/generate\"]")
        assert errors == []
    finally:
        context.close()
