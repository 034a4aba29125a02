"""QR codes as SVG (segno, pure Python): a guest link to show on a screen or print at the venue."""

from __future__ import annotations

import io

import segno

# a link with a key is ~120 characters: version 6-7 at medium error correction, about 45 modules a side
_MODULE_PX = 8


def qr_svg(text: str) -> bytes:
    """A standalone SVG of text as a QR code: black on white with the standard 4-module quiet zone (a dark
    page around it must not eat the margin scanners need)."""
    code = segno.make(text, error="m", micro=False)
    out = io.BytesIO()
    code.save(out, kind="svg", scale=_MODULE_PX, border=4, dark="#000", light="#fff", xmldecl=False, title="QR code")
    return out.getvalue()
