"""Screenshot the nerfstudio (viser) viewer of a running ``ns-train`` in headless Chromium and report its Control tab.

A manual check of where the CSD-Edit controls land in the real browser client (the unit test
``tests/test_viewer_controls.py`` checks viser's server-side state only). Needs Playwright in some Python
(``pip install playwright``; no ``playwright install``: it drives the system Chromium) and a running viewer::

    /tmp/pwvenv/bin/python scripts/viewer_screenshot.py --url http://localhost:7007 --out /tmp/vw/viewer.png
    # also type a new instruction and press "Resume Training":
    /tmp/pwvenv/bin/python scripts/viewer_screenshot.py --prompt "Turn the ball red" --resume
    # also set an edit region (centre and scale) and switch it on:
    /tmp/pwvenv/bin/python scripts/viewer_screenshot.py --region 0.1,0,-0.5,0.3,0.3,0.3 --resume

It prints the Control tab's labels in display order (folders marked ``[folder]``) and exits 1 when the
"CSD-Edit" folder is missing, not above nerfstudio's own controls, or not in the expected order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECTED = [
    "Edit instruction",
    "Text guidance scale",
    "Image guidance scale",
    "Edit inside the box only",
    "Box center",
    "Box rotation",
    "Box scale",
]
"""The labels inside the CSD-Edit folder, in order (the last four in its "Edit region" subfolder)."""

# The labels of the visible Control tab panel in document order: folder titles and input labels, each with the
# chain of folder titles it sits in. viser 0.2.7 draws a folder as a bordered Mantine Paper whose first child (a
# clickable Paper) holds the title and a chevron, and whose second child holds the folder's contents.
_LABELS_JS = """
() => {
  const panel = [...document.querySelectorAll('[role="tabpanel"]')].find(p => p.offsetParent !== null);
  if (!panel) return null;
  const FOLDER = '.mantine-Paper-root[data-with-border="true"]';
  const isFolder = el => el.matches(FOLDER) && el.firstElementChild &&
    el.firstElementChild.classList.contains('mantine-Paper-root');
  const folderChain = el => {
    const chain = [];
    for (let f = el.parentElement; f && f !== panel; f = f.parentElement) {
      if (isFolder(f)) chain.unshift(f.firstElementChild.innerText.trim());
    }
    return chain;
  };
  const out = [];
  const walker = document.createTreeWalker(panel, NodeFilter.SHOW_ELEMENT);
  for (let el = walker.currentNode; el; el = walker.nextNode()) {
    if (isFolder(el)) {
      out.push({kind: 'folder', text: el.firstElementChild.innerText.trim(), folders: folderChain(el)});
    } else if ((el.tagName === 'LABEL' || el.tagName === 'BUTTON') && el.offsetParent !== null) {
      const text = (el.innerText || '').trim();
      if (text) out.push({kind: el.tagName.toLowerCase(), text, folders: folderChain(el)});
    }
  }
  return out;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:7007")
    parser.add_argument("--out", default="/tmp/vw/csd_edit_viewer.png")
    parser.add_argument("--prompt", default=None, help="type this into 'Edit instruction' (then press Enter)")
    parser.add_argument("--resume", action="store_true", help="press the viewer's 'Resume Training' button")
    parser.add_argument("--region", default=None, help="CX,CY,CZ,SX,SY,SZ: type an edit region in and switch it on")
    parser.add_argument(
        "--no-composite-depth", action="store_true", help="untick 'Composite depth' (draw the box over the render)"
    )
    parser.add_argument("--zoom-out", type=int, default=0, help="scroll the 3D view out this many notches first")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--html", default=None, help="also write the page's HTML here")
    args = parser.parse_args()

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(args.url, timeout=args.timeout_s * 1000)
            # The GUI arrives over the websocket after the page loads: wait for nerfstudio's controls.
            page.get_by_text("Render Options").first.wait_for(timeout=args.timeout_s * 1000)
            try:  # the first render sets the output options (and hides the controls of unused ones)
                page.get_by_text(re.compile(r"Resolution: [1-9]")).first.wait_for(timeout=30_000)
            except PlaywrightTimeout:
                pass
            page.wait_for_timeout(2000)
            if args.prompt is not None:
                # viser's <label for=...> does not name the input's id: take the input in the label's row.
                label = page.locator("label", has_text="Edit instruction").first
                field = label.locator("xpath=ancestor::div[contains(@class, 'mantine-Flex-root')][1]//input").first
                field.fill(args.prompt)
                field.press("Enter")
                page.wait_for_timeout(1000)
            if args.region is not None:
                values = [v.strip() for v in args.region.split(",")]
                for name, numbers in (("Box center", values[:3]), ("Box scale", values[3:])):
                    label = page.locator("label", has_text=name).first
                    row = label.locator("xpath=ancestor::div[contains(@class, 'mantine-Flex-root')][1]")
                    for k, number in enumerate(numbers):
                        field = row.locator("input").nth(k)
                        field.fill(number)
                        field.press("Enter")
                page.locator("label", has_text="Edit inside the box only").first.click()
                page.wait_for_timeout(1000)
            for _ in range(args.zoom_out):
                page.mouse.move(500, 600)
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(300)
            if args.no_composite_depth:
                page.locator("label", has_text="Composite depth").first.click()
                page.wait_for_timeout(3000)
            if args.resume:
                page.get_by_role("button", name="Resume Training").first.click()
                page.wait_for_timeout(1000)
            page.screenshot(path=args.out, full_page=True)
            if args.html:
                with open(args.html, "w") as f:
                    f.write(page.content())
            labels = page.evaluate(_LABELS_JS)
        finally:
            browser.close()

    if labels is None:
        print("no visible tab panel found")
        return 1
    for item in labels:
        path = "/".join(item["folders"])
        mark = "[folder] " if item["kind"] == "folder" else ""
        print(f"{'  ' * len(item['folders'])}{mark}{item['text']!r}" + (f"   (in {path})" if path else ""))
    print(f"screenshot: {args.out}")

    problems = []
    folders = [i["text"] for i in labels if i["kind"] == "folder" and not i["folders"]]
    if "CSD-Edit" not in folders:
        problems.append(f"no top-level 'CSD-Edit' folder in the Control tab (folders: {folders})")
    else:
        first = labels[0]
        if not (first["kind"] == "folder" and first["text"] == "CSD-Edit"):
            problems.append(f"'CSD-Edit' is not the first thing in the Control tab (first: {first['text']!r})")
        inside = [i["text"] for i in labels if i["folders"][:1] == ["CSD-Edit"] and i["kind"] == "label"]
        if inside != EXPECTED:
            problems.append(f"'CSD-Edit' holds {inside}, expected {EXPECTED}")
    custom = [i["text"] for i in labels if "Custom Elements" in i["folders"] and i["text"] in EXPECTED]
    if custom:
        problems.append(f"under 'Custom Elements': {custom}")
    print(json.dumps({"ok": not problems, "problems": problems}))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
