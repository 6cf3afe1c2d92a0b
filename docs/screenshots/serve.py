"""Take docs/serve.png: the web page of `maskstatus serve` after a prediction, in headless chromium.

    python docs/screenshots/serve.py --run demo/runs/demo-... --image demo/data/eval/images/<id>.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser import chromium_page, find_chromium

from maskstatus.serve.app import create_app, running_server
from maskstatus.serve.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run or CV folder to serve")
    p.add_argument("--image", required=True, help="photo to upload through the page")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "serve.png"))
    p.add_argument("--width", type=int, default=860)
    p.add_argument("--height", type=int, default=560)
    args = p.parse_args(argv)
    chromium = find_chromium()
    app = create_app(Predictor([args.run], accelerator="cpu"))
    with running_server(app) as url, chromium_page(chromium, url, args.width, args.height) as page:
        page.set_input_files("#file", args.image)
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        page.screenshot(path=args.out, full_page=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
