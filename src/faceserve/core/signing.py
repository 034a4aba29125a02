"""Signed image URLs: an expiry and an HMAC-SHA256 over path and expiry, with key rotation.

Keys are configured as "id:secret,id:secret": the first signs, every one verifies, so a new key is rolled
out by putting it first and an old one retired by removing it once its URLs have expired.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import FaceServeError
from ..inputs import is_ascii_digits


class BadSignature(FaceServeError):
    status = 403
    code = "bad_signature"


class SignatureExpired(FaceServeError):
    status = 403
    code = "signature_expired"


@dataclass(frozen=True)
class SigningKeys:
    keys: tuple[tuple[str, bytes], ...]  # (key id, secret); the first signs

    @classmethod
    def parse(cls, spec: str) -> SigningKeys:
        keys = []
        for item in spec.split(","):
            key_id, sep, secret = item.strip().partition(":")
            if not sep or not key_id or len(secret) < 16:
                raise ValueError("signing keys look like 'id:secret,id:secret' with secrets of 16+ characters")
            keys.append((key_id, secret.encode()))
        return cls(tuple(keys))

    def secret(self, key_id: str) -> bytes | None:
        return next((secret for kid, secret in self.keys if kid == key_id), None)


def _mac(secret: bytes, path: str, expires: int) -> str:
    return hmac.new(secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def expiry(now: float, ttl: int, granularity: int) -> int:
    """Round the expiry up so one image keeps one URL for a while: caches see the same key repeatedly."""
    return int(math.ceil((now + ttl) / granularity) * granularity)


def sign(keys: SigningKeys, path: str, expires: int) -> str:
    """The query string to append to path."""
    key_id, secret = keys.keys[0]
    return f"exp={expires}&kid={key_id}&sig={_mac(secret, path, expires)}"


def verify(keys: SigningKeys, path: str, query: dict[str, str], now: float) -> int:
    """Check a request's exp/kid/sig for path; returns the seconds the signature has left."""
    try:
        exp, key_id, signature = query["exp"], query["kid"], query["sig"]
    except KeyError:
        raise BadSignature("this URL needs a valid signature (exp, kid, sig)") from None
    # exp exactly as sign() writes it (int() would also take '٣', '1_0' or '01': other spellings of one URL);
    # sig in ASCII, as compare_digest refuses other str
    if len(exp) > 20 or not is_ascii_digits(exp) or str(int(exp)) != exp or not signature.isascii():
        raise BadSignature("this URL needs a valid signature (exp, kid, sig)")
    expires = int(exp)
    secret = keys.secret(key_id)
    if secret is None or not hmac.compare_digest(_mac(secret, path, expires), signature):
        raise BadSignature("the URL's signature does not match")
    if expires <= now:
        raise SignatureExpired("the URL's signature has expired")
    return int(expires - now)


# The one spelling a signed URL has: what sign() writes, then optional derivative parameters (?w=320) in
# plain lowercase ASCII. No second spelling of exp, kid, sig or the id passes (leading zeros, signs,
# spaces, underscores, percent-encodings), so forged variants never become fresh cache keys at a CDN.
_SIGNED_QUERY = re.compile(
    r"exp=([1-9][0-9]{0,11})&kid=([A-Za-z0-9]{1,32})&sig=([0-9a-f]{64})"
    r"((?:&[a-z]{1,8}=(?:[1-9][0-9]{0,5}|[a-z]{1,10}))*)"
)


def verify_exact(keys: SigningKeys, target: str, now: float, extra_names: Collection[str] = ()) -> int:
    """verify() for a raw request target (path and query exactly as received, not decoded). After the
    signature only extra_names may follow (the route's derivative parameters), each at most once: an unknown
    or repeated one (`&zz=1`, `&w=320&w=640`) would be one more cache key for the same answer."""
    path, _, query = target.partition("?")
    match = _SIGNED_QUERY.fullmatch(query)
    if match is None or "%" in path:
        raise BadSignature("this URL needs a valid signature (exp, kid, sig), spelled as it was given")
    names = [pair.partition("=")[0] for pair in match.group(4).split("&")[1:]]
    if len(set(names)) != len(names) or not set(names) <= set(extra_names):
        allowed = ", ".join(extra_names) or "none"
        raise BadSignature(f"a signed URL takes no parameters but its signature and, once each: {allowed}")
    return verify(keys, path, {"exp": match.group(1), "kid": match.group(2), "sig": match.group(3)}, now)
