"""Screenshot chosen sections of a privdiff HTML report, one PNG each, in headless Chromium.

The README's demo pictures are sections of ``out/demo/report.html``; cutting a tall full-page
capture into fixed tiles (``scripts/screenshot-report.sh``) splits sections mid-table, so this
captures each ``<section>`` element whole (cropped to ``--max-height`` pixels if taller).

    python scripts/screenshot-report-sections.py out/demo/report.html docs/results/demo \\
        at-a-glance:report_1_overview dp-rdm--answering-prompts-from-a-private-collection:report_2_dprdm

Drives Debian's /usr/bin/chromium through Playwright (``executable_path``; never ``playwright install``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("sections", nargs="+", help="SECTION_ID:NAME pairs (the PNG is OUT_DIR/NAME.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--max-height", type=int, default=2400)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        print("error: no chromium found; install it with: apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": 1000})
        page.goto(args.report.resolve().as_uri())
        for pair in args.sections:
            sid, _, name = pair.partition(":")
            box = page.locator(f"section#{sid}").bounding_box()
            if box is None:
                print(f"error: no section #{sid} in {args.report}", file=sys.stderr)
                return 1
            clip = {"x": 0, "y": box["y"], "width": args.width, "height": min(box["height"], args.max_height)}
            target = args.out_dir / f"{name}.png"
            page.screenshot(path=str(target), clip=clip, full_page=True)
            print(f"{target}: {args.width}×{int(clip['height'])} px (section #{sid})")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
