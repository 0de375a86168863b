"""mkdocs hook: the site's home page is the README, so the front page is written once.

The README links into docs/ (`docs/usage.md`, `docs/images/serve.png`); on the site those pages sit beside it.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return README.read_text().replace("](docs/", "](")
