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


class NotAnImage(FaceServeError):
    status = 415
    code = "not_an_image"


class NoFaceFound(FaceServeError):
    status = 422
    code = "no_face_found"


class NotReady(FaceServeError):
    status = 503
    code = "not_ready"


class Busy(FaceServeError):
    """Too much work queued already: the client should come back after retry_after seconds."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
