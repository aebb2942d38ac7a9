"""The pieces every offline report page shares: its style, escaping, embedded images, links.

A report must open from a laptop without internet, so everything is inline: CSS in the page,
thumbnails as ``data:`` URIs, charts as SVG. Links to image files are relative to the page, so
the project folder can be moved or copied as a whole.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

#: Longest side of a thumbnail, in pixels.
THUMB_PIXELS = 96
STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin:0 0 8px} h2{margin-top:28px;border-bottom:1px solid #ccc}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.pass{background:#e3f6e5;color:#185c22} .fail{background:#fde4e1;color:#8a1c12}
.info{background:#e4ecfa;color:#183a70}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4}
.bad{color:#b3261e;font-weight:600} .good{color:#185c22;font-weight:600} .muted{color:#777}
.cards{display:flex;flex-wrap:wrap;gap:10px} .card{width:210px;border:1px solid #ddd;
border-radius:6px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.card img{display:block;max-width:96px;max-height:96px;margin-bottom:4px}
.noimg{width:96px;height:64px;background:#eee;display:flex;align-items:center;
justify-content:center;color:#777;margin-bottom:4px;text-align:center;font-size:11px}
.tag{display:inline-block;background:#fde4e1;color:#8a1c12;border-radius:3px;padding:0 4px}
.bar{display:inline-block;height:10px;background:#4a78c2;vertical-align:middle}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
"""


def escape(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def page(title: str, parts: list[str]) -> str:
    """A whole HTML document: ``title`` as its title and heading, then ``parts``."""
    return "\n".join([f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}"
                      f"</title><style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
                      *parts, "</body></html>"])


def jpeg_uri(jpeg: bytes) -> str:
    """A JPEG's bytes as a ``data:`` URI, for an ``<img src>`` that needs no file."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def file_link(target: Path, page_path: Path) -> str:
    """A URL of the file ``target``, relative to the page at ``page_path``."""
    return quote(Path(os.path.relpath(target.resolve(), page_path.resolve().parent)).as_posix())


def card(thumb: str | None, alt: str, body: str, href: str | None = None) -> str:
    """One image card: its thumbnail (a link to the file when ``href``) above ``body`` (HTML)."""
    image = (f"<img src='{thumb}' alt='{escape(alt)}'>" if thumb else
             "<div class='noimg'>no preview</div>")
    if href:
        image = f"<a href='{escape(href)}'>{image}</a>"
    return f"<div class='card'>{image}{body}</div>"
