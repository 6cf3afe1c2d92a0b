"""Take docs/images/review.png: the page of `maskstatus review` on a CV's label suspects, in headless chromium.

    python docs/screenshots/review.py runs/proxy-cv-… [--out docs/images/review.png]

Only looks: it opens the page at its first open suspect and decides nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser import chromium_page, find_chromium

from maskstatus.review.app import open_review
from maskstatus.serve.app import running_server

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "images" / "review.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cv", help="CV folder to review")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="PNG to write (default %(default)s)")
    p.add_argument("--data-root", default=None, help="the data folder, if not the CV's data.root")
    p.add_argument("--task", default="", choices=("", "gender", "age", "mask_swap"), help="show this task's suspects")
    p.add_argument("--width", type=int, default=1360)
    p.add_argument("--height", type=int, default=660)
    args = p.parse_args(argv)
    chromium = find_chromium()
    app, _, _ = open_review(args.cv, data_root=args.data_root)
    with running_server(app) as url, chromium_page(chromium, url, args.width, args.height) as page:
        page.wait_for_selector("body[data-state=ready]", timeout=60_000)
        if args.task:
            page.select_option("#task-filter", args.task)
        # Every photo loaded before the picture is taken.
        page.wait_for_function("[...document.images].every((i) => i.complete && i.naturalWidth > 0)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
