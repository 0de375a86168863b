"""The screenshot the docs show of imgclf-serve: a real recipe on real photos, in a real browser.

Trains `python train.py -cn=transfer dataset.root=../shared/data/food101_mini` (reused when finished), tests it
(`python test.py`, so the page's headline carries its test accuracy), starts `imgclf-serve --experiment` on
127.0.0.1, opens the page in Debian's headless chromium through Playwright, picks one test photo of each of
`--classes` and writes the page as docs/images/serve.png.

    python benchmarks/serve_screenshot.py [--classes beignets bibimbap ...] [--out docs/images/serve.png]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "food101_mini"
EXPERIMENT = "food101_mini_transfer"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def start_server(experiment: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgclf.cli.serve",
            "--experiment",
            experiment,
            "--port",
            "0",
            "--top-k",
            "3",
            "--min-confidence",
            "0.6",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in server.stdout:  # uvicorn says where it listens
        if found := re.search(r"Uvicorn running on (http://\S+)", line):
            return server, found.group(1)
        if time.monotonic() > deadline:
            break
    server.kill()
    raise SystemExit("imgclf-serve did not start")


def screenshot(url: str, photos: list[Path], out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1180, "height": 640},
            bypass_csp=True,  # the page forbids eval, which Playwright's wait_for_function uses
        )
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_function("document.getElementById('card').textContent.includes('classes')")
        page.set_input_files("#file", [str(p) for p in photos])
        page.wait_for_function(f"document.querySelectorAll('.result.done, .result.failed').length === {len(photos)}")
        page.wait_for_function("Array.from(document.images).every(img => img.complete)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        print(page.text_content("#card"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", nargs="+", default=["beignets", "bibimbap", "beef_tartare", "apple_pie"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    parser.add_argument("--data", type=Path, default=DATA, help="the food101_mini folder (default ../shared/data/...)")
    args = parser.parse_args()
    recipe = ["-cn=transfer", f"dataset.root={args.data}", f"experiment={EXPERIMENT}"]
    run("train.py", *recipe)
    run("test.py", *recipe)
    photos = [sorted((args.data / "test" / name).glob("*.jpg"))[0] for name in args.classes]
    server, url = start_server(EXPERIMENT)
    try:
        screenshot(url, photos, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
