"""One headless chromium page on a local server: what the docs' screenshot scripts share.

Playwright cannot download its own browsers here, so the page runs in Debian's chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str:
    """The system chromium; checked before a script starts its server, so a missing browser is said at once."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    return chromium


@contextmanager
def chromium_page(chromium: str, url: str, width: int, height: int) -> Iterator[Page]:
    """A page of that size opened at ``url``; the browser is closed on the way out."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url + "/")
            yield page
        finally:
            browser.close()
