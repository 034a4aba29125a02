"""Every answer the tests get from the app is checked against the committed OpenAPI document.

conftest.py's `client` fixture wraps its TestClient with `check_answers`: a real answer that the document does
not describe (an undocumented status, a body that breaks its schema, a wrong media type) fails the test that
received it. Requests to paths the document does not know (deliberate 404s for unknown routes, 405s for
methods no route has) are not checked here; tests/test_openapi.py checks that every route is documented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import MissingData

from faceserve.http.docs import document

_HOST = "http://localhost"


def _is_text(content_type: str) -> bool:
    return content_type.startswith(("application/json", "text/"))


@cache
def openapi() -> OpenAPI:
    return OpenAPI.from_dict(document())


def check_answer(method: str, path: str, query: dict[str, str], status: int, headers: dict[str, str], body: bytes) -> None:
    content_type = headers.get("Content-Type", "application/octet-stream")
    request = MockRequest(_HOST, method.lower(), path, args=query)
    response = MockResponse(body, status_code=status, headers=headers, content_type=content_type)
    try:
        openapi().validate_response(request, response)
    except (PathNotFound, OperationNotFound):
        return
    except MissingData:
        if body or _is_text(content_type):
            raise AssertionError(f"{method} {path} answered {status} {content_type} with no body") from None
        # a binary body (an image) is not read here, and a zero-byte file is a real answer: the status, the
        # headers and the media type were checked before the data
    except Exception as exc:  # every other finding is a broken contract: say what was answered
        raise AssertionError(
            f"{method} {path} answered {status} {content_type} that breaks openapi.json: {exc!r}; "
            f"body {body[:300]!r}"
        ) from exc


def check_answers(client: TestClient) -> TestClient:
    original: Callable[..., Awaitable[ClientResponse]] = client._request

    async def checked(method: str, path: Any, **kwargs: Any) -> ClientResponse:
        response = await original(method, path, **kwargs)
        # text bodies are read (aiohttp keeps them for the test's own .json()/.read()); binary ones are left
        # for tests that stream them, and checked for status, headers and media type only
        body = await response.read() if _is_text(response.headers.get("Content-Type", "")) else b""
        check_answer(
            response.method, response.url.path, dict(response.url.query), response.status,
            dict(response.headers), body,
        )
        return response

    client._request = checked  # type: ignore[method-assign]
    return client
