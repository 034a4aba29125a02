"""Live tokens: a search's probe face sealed for the guest to hand back (POST .../live with `probe_token`)
when they opt in to live results, so the service keeps nothing of a search that never goes live and embeds
no selfie twice.

A token is AES-256-GCM under a key derived (HKDF-SHA256, its own label) from the service's signing key
material (core/signing.py: the keys kept in Postgres, or FACESERVE_SIGNING_KEYS). It names its key's id, so
rotation and retirement work as for signed URLs. The plaintext is the embedding's dimension and its float32
values; the header before it (version, key id, session, expiry) is authenticated data, and so is the model
pack's name (not carried: a token of other models, even of the same size, does not open). Base64url, no
padding:

    version (1) | key id length (1) | key id | session id (8) | expires, Unix seconds (8) | nonce (12) | sealed
"""

from __future__ import annotations

import base64
import os
import re
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import LiveTokenExpired, LiveTokenInvalid, LiveTokenOtherModel, LiveTokenOtherSession
from .signing import SigningKeys

_VERSION = 1
_INFO = b"faceserve live token v1"  # the HKDF label: these keys are for nothing else
_NONCE = 12
_TAG = 16
_SESSION_EXPIRES = struct.Struct(">QQ")
_DIM = struct.Struct(">H")
# a token far larger than any embedding's is refused before it is decoded
MAX_CHARS = 16 * 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _aead(secret: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO).derive(secret))


def seal(keys: SigningKeys, session_id: int, embedding: np.ndarray, expires: int, models: str) -> str:
    """The token of one probe face of session_id embedded by the model pack `models`, valid until `expires`
    (Unix seconds)."""
    key_id, secret = keys.keys[0]
    kid = key_id.encode()
    header = bytes([_VERSION, len(kid)]) + kid + _SESSION_EXPIRES.pack(session_id, expires)
    values = np.ascontiguousarray(embedding, dtype="<f4").reshape(-1)
    nonce = os.urandom(_NONCE)
    sealed = _aead(secret).encrypt(nonce, _DIM.pack(len(values)) + values.tobytes(), _authenticated(header, models))
    return base64.urlsafe_b64encode(header + nonce + sealed).rstrip(b"=").decode("ascii")


def unseal(keys: SigningKeys, token: str, session_id: int, dim: int, now: float, models: str) -> np.ndarray:
    """The (dim,) float32 embedding a token of session_id holds. Authenticity is checked first: only a token
    this service sealed for these models is told apart as expired, of another session or of another size."""
    raw = _decode(token)
    kid_end = 2 + (raw[1] if len(raw) > 1 else 0)
    header_end = kid_end + _SESSION_EXPIRES.size
    if len(raw) < header_end + _NONCE + _TAG or raw[0] != _VERSION:
        raise LiveTokenInvalid("probe_token is not a live token of this service")
    secret = keys.secret(raw[2:kid_end].decode("ascii", "replace"))
    if secret is None:
        raise LiveTokenInvalid("probe_token was sealed with a key this service no longer has: search again")
    header = raw[:header_end]
    try:
        plain = _aead(secret).decrypt(
            raw[header_end : header_end + _NONCE], raw[header_end + _NONCE :], _authenticated(header, models)
        )
    except InvalidTag:
        raise LiveTokenInvalid(
            "probe_token was altered, or is not a live token of this service and its models: search again"
        ) from None
    sealed_session, expires = _SESSION_EXPIRES.unpack(raw[kid_end:header_end])
    if sealed_session != session_id:
        raise LiveTokenOtherSession(f"probe_token is of another session, not of session {session_id}")
    if expires <= now:
        raise LiveTokenExpired("probe_token has expired: search again for a fresh one")
    (sealed_dim,) = _DIM.unpack(plain[: _DIM.size])
    if sealed_dim != dim or len(plain) != _DIM.size + 4 * dim:
        raise LiveTokenOtherModel(
            f"probe_token holds an embedding of {sealed_dim} values, the models now make {dim}: search again"
        )
    return np.frombuffer(plain, dtype="<f4", offset=_DIM.size).astype(np.float32)


def _authenticated(header: bytes, models: str) -> bytes:
    return header + b"\x00" + models.encode()


def _decode(token: str) -> bytes:
    """Base64url without padding, exactly as seal() writes it (no other alphabet, no skipped characters)."""
    if len(token) > MAX_CHARS or len(token) % 4 == 1 or not _BASE64URL.fullmatch(token):
        raise LiveTokenInvalid("probe_token is not a live token of this service")
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
