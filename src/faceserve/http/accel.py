"""Hand an image body to nginx (X-Accel-Redirect) once the origin has decided the answer.

With `accel_redirect` set (e.g. "/_faceserve_files/", an `internal` nginx location aliasing the storage's
face_sessions/ folder), the origin still does everything but copy bytes: the access check, the row, the
preconditions and the choice of file. For a 200 or a 206 of a file on disk it answers with no body and
`X-Accel-Redirect`, so nginx sends the file (sendfile, its own connection to a slow client) and the Python
process is free at once. deploy/nginx.conf restores what nginx would otherwise replace: it keeps an
upstream's Content-Type, Cache-Control and Accept-Ranges across the redirect but makes its own ETag and
Last-Modified (mtime and size), so the internal location has `etag off` and puts faceserve's back with
add_header.

nginx evaluates the client's If-* and Range headers again on the file, by its own rules. The origin only
hands off requests where those rules cannot give another answer than its own: If-None-Match and
If-Modified-Since already failed here (and the location ignores them: no nginx ETag, `if_modified_since off`),
and a Range header is handed off only when it is one well-formed satisfiable range, which nginx reads the
same way. Requests with If-Match, If-Unmodified-Since or If-Range (resumed downloads; nginx would test them
against its own validators), HEAD, and ranges nginx would read otherwise (it answers 416 where RFC 9110 lets
the origin ignore a malformed range) are served by the origin as before.

Only requests that say they come through such a location are handed off: nginx's file tier sends
`X-Sendfile-Type: X-Accel-Redirect` (the convention of Rack::Sendfile), so a request straight to a node
(a health check, an operator's curl, the tests' direct baseline) still gets its bytes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from ..core.served import ServedFile
from . import conditional

_ACCEL = "X-Accel-Redirect"
# what an X-Accel-Redirect URI may carry unescaped (stored names are made of these; imported ones may not be)
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/-]+")


def hand_off(
    request: web.Request,
    prefix: str,
    sessions_root: Path,
    entry: ServedFile,
    fd: int | None,
    status: int,
    cache_control: str | None,
) -> web.Response | None:
    """The bodiless answer that tells nginx to send entry's file, or None when the origin must answer. fd:
    the file opened, or None when its presence was seen a moment ago (then a Range asks for the open)."""
    if not may_hand_off(request, status, None if fd is None else os.fstat(fd).st_size):
        return None
    answer = entry.accel_headers
    if answer is None:
        answer = entry.accel_headers = _headers(entry, prefix, sessions_root)
    if not answer:
        return None
    if cache_control is None:
        return web.Response(status=200, headers=answer)
    return web.Response(status=200, headers={**answer, "Cache-Control": cache_control})  # not past the signature's expiry


def may_hand_off(request: web.Request, status: int, size: int | None) -> bool:
    """Whether nginx may send this answer's body: a GET 200 the file tier asked to be handed, with nothing
    nginx (or the object store behind it) would judge otherwise. size: the body's, None when unknown."""
    headers = request.headers
    if status != 200 or request.method != "GET" or headers.get("X-Sendfile-Type") != _ACCEL:
        return False
    # nginx would revalidate these against its own validators
    if "If-Match" in headers or "If-Unmodified-Since" in headers or "If-Range" in headers:
        return False
    if "Range" in headers:
        if size is None:
            return False
        try:
            if conditional.parse_range(headers["Range"], size) is None:
                return False  # ignored here; nginx might answer 416
        except conditional.Unsatisfiable:
            return False  # the origin's 416 carries its own headers
    return True


def object_hand_off(prefix: str, entry: ServedFile, presigned_url: str, cache_control: str | None) -> web.Response:
    """The bodiless answer that tells nginx to fetch an object itself: X-Accel-Redirect to
    {prefix}{etag}/{bucket}/{key}?{signature}, a location that proxies to the store (deploy/nginx.conf) and
    puts the row's ETag (from the path) in place of the store's. The presigned URL asks the store for our
    Cache-Control; the store answers Content-Type, Accept-Ranges and ranges itself."""
    target = urlsplit(presigned_url)
    headers = {**dict(entry.headers), "Content-Type": entry.content_type}
    if cache_control is not None:
        headers["Cache-Control"] = cache_control
    tag = entry.etag.strip('"')
    headers[_ACCEL] = f"{prefix}{tag}{target.path}?{target.query}"
    return web.Response(status=200, headers=headers)


def _headers(entry: ServedFile, prefix: str, sessions_root: Path) -> dict[str, str]:
    """The hand-off's headers for entry: its 200's, Content-Type and the X-Accel-Redirect URI, which carries
    the path under the sessions root unescaped; empty where it cannot. Worked out once per entry: the
    hand-off is on every cold request's path, where a node's own 304 (answered from memory) sets the pace."""
    try:
        relative = entry.disk_path.relative_to(sessions_root).as_posix()
    except ValueError:
        return {}
    if not _PLAIN_PATH.fullmatch(relative) or ".." in relative:
        return {}
    return {**dict(entry.headers), "Content-Type": entry.content_type, _ACCEL: prefix + relative}
