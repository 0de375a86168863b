"""The page of imgclf-serve in a real browser: Debian's chromium, headless, driven by Playwright, against a real
server. It picks images through the file input, reads the classes the page shows, and saves the screenshot the
README shows (docs/images/serve.png, rewritten only with IMGCLF_UPDATE_SCREENSHOT=1, so a test run leaves the
checkout as it was). .ci/run installs chromium; without it this test skips, saying why."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from serve_helpers import start_server, stop_server

from helpers import compose_cfg, copy_trained

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what a CI machine needs: no sandbox as root, no GPU, and no traffic of its own to anywhere
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)"
)


@pytest.mark.slow
def test_the_page_classifies_picked_images_and_shows_bars_flags_errors_and_the_model_card(
    trained_tiny, tiny_folder: Path, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    import imgclf.tasks as tasks

    overrides, exp = copy_trained(trained_tiny, tmp_path)
    tasks.test(compose_cfg("train", overrides))  # test/metrics.json: the accuracy and interval the page shows
    pictures = [tmp_path / f"{c}.png" for c in ("circle", "square", "stripes")]
    for picture in pictures:
        shutil.copy(sorted((tiny_folder / "test" / picture.stem).glob("*.png"))[1], picture)
    hostile = tmp_path / "<b>not bold.png"  # a file name is shown as text, never as markup
    hostile.write_bytes(b"this is not an image")
    server = start_server("--model", str(exp / "best.pt"), "--min-confidence", "0.4")
    try:
        with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            browser = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1180, "height": 640},
                bypass_csp=True,
            )  # the page's CSP forbids the test's eval
            try:
                shown = classify_in_page(browser.new_page(), server.url, [*pictures, hostile], tmp_path / "serve.png")
            finally:
                browser.close()
        with server.client() as client:
            expected = [client.post("/predict", files=[("file", (p.name, p.read_bytes()))]).json() for p in pictures]
    finally:
        stop_server(server)
    assert shown["headline"].startswith("SmallCNN, 3 classes: circle, square, stripes | test accuracy ")
    assert "95% CI" in shown["headline"]
    assert shown["names"] == [p.name for p in pictures] + [hostile.name]
    assert shown["tops"] == [e["predictions"][0]["class"] for e in expected]
    assert shown["bars"] == [3, 3, 3]
    assert shown["flags"] == [e["low_confidence"] for e in expected]
    assert "not an image" in shown["error"] and shown["bold"] == 0
    assert (tmp_path / "serve.png").stat().st_size > 10_000


def classify_in_page(page, url: str, files: list[Path], screenshot: Path) -> dict:
    """Open the page, pick ``files`` through its file input, wait for every answer; read what it shows."""
    page.set_default_timeout(WAIT_MS)
    outside = []
    page.on(
        "request", lambda request: outside.append(request.url) if not request.url.startswith((url, "blob:")) else None
    )
    page.goto(url)
    page.wait_for_function("document.getElementById('card').textContent.includes('classes')")
    page.set_input_files("#file", [str(f) for f in files])
    page.wait_for_function(f"document.querySelectorAll('.result.done, .result.failed').length === {len(files)}")
    page.wait_for_function("Array.from(document.images).every(img => img.complete)")
    page.screenshot(path=str(screenshot), full_page=True)
    cards = page.locator(".result")
    assert outside == [], f"the page requested something from another host: {outside}"
    return {
        "headline": page.text_content("#card"),
        "names": [cards.nth(i).locator(".filename").text_content() for i in range(len(files))],
        "tops": [cards.nth(i).locator(".top-class").get_attribute("data-class") for i in range(len(files) - 1)],
        "bars": [cards.nth(i).locator(".bar-row").count() for i in range(len(files) - 1)],
        "flags": [cards.nth(i).locator(".flag").count() == 1 for i in range(len(files) - 1)],
        "error": cards.nth(len(files) - 1).locator(".error").text_content(),
        "bold": page.locator("b").count(),
    }
