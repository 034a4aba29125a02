"""Domain errors. Lower layers raise these; http/middleware.py maps them to the JSON envelope once."""

from __future__ import annotations


class FaceServeError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FaceServeError):
    status = 400
    code = "bad_request"


class SessionNotFound(FaceServeError):
    status = 404
    code = "session_not_found"


class ImageNotFound(FaceServeError):
    status = 404
    code = "image_not_found"


class FaceNotFound(FaceServeError):
    status = 404
    code = "face_not_found"


class LiveSearchNotFound(FaceServeError):
    status = 404
    code = "live_search_not_found"


class TooManyLiveSearches(FaceServeError):
    """The session holds LIVE_SEARCHES_PER_SESSION unexpired live searches: each one is compared with every
    upload of the session, so their number is bounded like any other cost."""

    status = 409
    code = "too_many_live_searches"


class LiveTokenInvalid(FaceServeError):
    """A live token (core/live_tokens.py) that is malformed, altered, or sealed with a key retired since."""

    status = 400
    code = "live_token_invalid"


class LiveTokenOtherSession(FaceServeError):
    """A live token of another session than the one the live search is asked for in."""

    status = 403
    code = "live_token_other_session"


class LiveTokenExpired(FaceServeError):
    """A live token past its LIVE_TOKEN_MINUTES: the guest searches again for a fresh one."""

    status = 410
    code = "live_token_expired"


class LiveTokenOtherModel(FaceServeError):
    """A live token of an embedding the models no longer make (another pack, another dimension)."""

    status = 409
    code = "live_token_other_model"


class RequestTimeout(FaceServeError):
    """The request body stalled or came too slowly (http/pace.py)."""

    status = 408
    code = "request_timeout"


class PersonNotFound(FaceServeError):
    status = 404
    code = "person_not_found"


class PayloadTooLarge(FaceServeError):
    status = 413
    code = "payload_too_large"


class ImageTooLarge(FaceServeError):
    """Too many pixels: a decompression bomb or simply more than the service accepts."""

    status = 413
    code = "image_too_large"


class MetadataTooLarge(FaceServeError):
    """A JPEG with more metadata segments than any camera writes (media/decoding.py): each open of it would
    cost seconds of CPU."""

    status = 413
    code = "metadata_too_large"


class NotAnImage(FaceServeError):
    status = 415
    code = "not_an_image"


class NoFaceFound(FaceServeError):
    status = 422
    code = "no_face_found"


class InsufficientStorage(FaceServeError):
    """The disk (or the database's) is full: nothing was kept. Answered with Retry-After
    (storage_full_retry_after_s): freeing space takes an operator, not a moment."""

    status = 507
    code = "insufficient_storage"


class FaceTooSmall(FaceServeError):
    """The probe's face has too few pixels to match reliably (core/matching.py, vision/quality.py)."""

    status = 422
    code = "face_too_small"


class FaceBlurred(FaceServeError):
    status = 422
    code = "face_blurred"


class FaceTurned(FaceServeError):
    status = 422
    code = "face_turned"


class NotReady(FaceServeError):
    status = 503
    code = "not_ready"


class Unavailable(FaceServeError):
    """The database is down or restarting: the client should come back after retry_after seconds."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(FaceServeError):
    """Too much work queued already: the client should come back after retry_after seconds."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(FaceServeError):
    """No key, or one that is unknown, revoked or expired."""

    status = 401
    code = "unauthorized"


class Forbidden(FaceServeError):
    """A key without the scope, or bound to other sessions."""

    status = 403
    code = "forbidden"


class SetupLinkInvalid(FaceServeError):
    """A setup link's token that is malformed, used already or expired (core/setup_links.py)."""

    status = 403
    code = "setup_link_invalid"


class RateLimited(FaceServeError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers
