"""Take docs/serve.png: the web page of `maskstatus serve` after a prediction, in headless chromium.

    python docs/serve_screenshot.py --run demo/runs/demo-... --image demo/data/eval/images/<id>.jpg
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from maskstatus.serve.app import create_app, running_server
from maskstatus.serve.predictor import Predictor

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run or CV folder to serve")
    p.add_argument("--image", required=True, help="photo to upload through the page")
    p.add_argument("--out", default=str(Path(__file__).with_name("serve.png")))
    p.add_argument("--width", type=int, default=860)
    p.add_argument("--height", type=int, default=560)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    app = create_app(Predictor([args.run], accelerator="cpu"))
    with running_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            page.set_input_files("#file", args.image)
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
