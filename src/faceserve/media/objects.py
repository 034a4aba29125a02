"""Objects in an S3-compatible store (FACESERVE_IMAGE_STORE=s3): the client, the keys, and the few calls the
image store needs (put a file, in parts above a size; read or stream a byte range; head; delete one key or
everything under a session).

The client is aiobotocore (aio-libs, the makers of aiohttp): botocore's own request signing, credential chain
(environment, AWS_PROFILE and ~/.aws files, SSO, instance roles), retry modes and the whole S3 API, on the
aiohttp the service already runs on. So no thread pool per request (boto3 would need one) and no second
HTTP stack; its aiohttp connector keeps s3_max_connections connections open for reuse. The "standard" retry
mode retries 5xx answers, throttling (SlowDown, 503) and broken connections, with exponential backoff and
full jitter; what still fails after s3_max_attempts tries is Unavailable (503 with Retry-After).

An object's key is the row's file_path under s3_prefix: {prefix}/face_sessions/{id}/db/{name}, the layout
of the storage folder, so a bucket can be read by tools that know that layout (and `faceserve import`).
Resized copies and face crops of an original kept here are objects too, under their own prefix:
{prefix}/derived/{id}/{image id}-{key}.{ext} (derived_path), so that a session's or an image's go by prefix.
Credentials are never settings and never logged: botocore finds them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import ClientError as TransportError
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from ..config import Settings
from ..errors import Unavailable
from ..layout import DERIVED_DIR, SESSIONS_DIR

log = logging.getLogger(__name__)

_STREAM_CHUNK = 256 * 1024
# DeleteObjects takes at most this many keys a call
_DELETE_BATCH = 1000
_ABSENT = ("404", "NoSuchKey", "NotFound")
# the store unreachable, gone mid-answer or too slow: a passing outage (missing credentials are not)
_OUTAGES = (EndpointUnreachable, HTTPClientError, TransportError, TimeoutError)


class ObjectStore:
    """One bucket (and prefix) through one pooled client; every call a coroutine, none blocks the loop."""

    def __init__(self, client: Any, settings: Settings) -> None:
        assert settings.s3_bucket is not None
        self._client = client
        self.bucket = settings.s3_bucket
        self._prefix = settings.s3_prefix.strip("/")
        self._multipart_threshold = settings.s3_multipart_threshold
        self._multipart_chunk = settings.s3_multipart_chunk
        self._retry_after = settings.db_retry_after_s

    def key(self, file_path: str) -> str:
        """The object of a row's file_path ("face_sessions/1/db/x.jpg")."""
        return f"{self._prefix}/{file_path}" if self._prefix else file_path

    def session_prefix(self, session_id: int) -> str:
        return self.key(f"{SESSIONS_DIR}/{int(session_id)}/")

    async def put_bytes(self, file_path: str, data: bytes, content_type: str) -> None:
        """A small body (a rendered derivative) as file_path's object, in one PUT the store checks."""
        key = self.key(file_path)
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        with self._failures(f"put {key}"):
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, ChecksumSHA256=checksum
            )

    async def put_file(self, file_path: str, source: Path, size: int, sha256: bytes, content_type: str) -> None:
        """Upload a received file as file_path's object: one PUT the store checks against the upload's
        SHA-256, or parts of s3_multipart_chunk bytes from s3_multipart_threshold on."""
        key = self.key(file_path)
        with self._failures(f"put {key}"):
            if size < self._multipart_threshold:
                body = await asyncio.to_thread(source.read_bytes)
                await self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    ChecksumSHA256=base64.b64encode(sha256).decode("ascii"),
                )
                return
            await self._put_in_parts(key, source, size, content_type)

    async def _put_in_parts(self, key: str, source: Path, size: int, content_type: str) -> None:
        started = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        upload_id = started["UploadId"]
        parts = []
        try:
            with source.open("rb") as stream:
                for number, offset in enumerate(range(0, size, self._multipart_chunk), start=1):
                    # one part in memory at a time, read off the loop
                    chunk = await asyncio.to_thread(stream.read, self._multipart_chunk)
                    answer = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # the store would keep the parts (and bill them) until a lifecycle rule removes them
            try:
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (BotoCoreError, ClientError, TransportError) as exc:
                log.warning("could not abort the multipart upload of %s: %s", key, type(exc).__name__)
            raise

    async def size(self, file_path: str) -> int | None:
        """The object's length, None when there is none."""
        key = self.key(file_path)
        with self._failures(f"head {key}"):
            try:
                answer = await self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if is_absent(exc):
                    return None
                raise
        return int(answer["ContentLength"])

    async def read(self, file_path: str, offset: int = 0, count: int | None = None) -> bytes | None:
        """The object's bytes (count from offset), None when there is no object."""
        if count == 0:
            return b""
        try:
            return b"".join([chunk async for chunk in self.stream(file_path, offset, count)])
        except FileNotFoundError:
            return None

    async def stream(self, file_path: str, offset: int = 0, count: int | None = None) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks, asked of the store with the same Range (the client's, passed
        through). FileNotFoundError when there is no object, as opening a missing file would."""
        key = self.key(file_path)
        asked: dict[str, str] = {}
        if offset or count is not None:
            asked["Range"] = f"bytes={offset}-" + ("" if count is None else str(offset + count - 1))
        with self._failures(f"get {key}"):
            try:
                answer = await self._client.get_object(Bucket=self.bucket, Key=key, **asked)
            except ClientError as exc:
                if is_absent(exc):
                    raise FileNotFoundError(key) from None
                raise
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(_STREAM_CHUNK):
                    yield chunk

    async def presigned_get(self, file_path: str, ttl_s: int, cache_control: str) -> str:
        """A URL anyone may GET the object by for ttl_s seconds (signed here, no call to the store); the
        store answers it with cache_control, so caches past it keep the object as they keep our answers."""
        return await self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(file_path), "ResponseCacheControl": cache_control},
            ExpiresIn=ttl_s,
        )

    async def delete(self, file_path: str) -> None:
        """Remove file_path's object; nothing there is no error (S3 answers 204 either way)."""
        key = self.key(file_path)
        with self._failures(f"delete {key}"):
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def keys_under(self, prefix: str) -> list[str]:
        """Every key under prefix (a key prefix as session_prefix makes it)."""
        keys: list[str] = []
        with self._failures(f"list {prefix}"):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", ()))
        return keys

    async def delete_session(self, session_id: int) -> int:
        """Remove every object of a session, its derivatives too; returns how many there were."""
        removed = await self.delete_under(self.session_prefix(session_id))
        return removed + await self.delete_under(self.key(derived_path(session_id, "")))

    async def delete_under(self, prefix: str) -> int:
        """Remove every object whose key starts with prefix, a thousand keys a call; returns how many."""
        keys = await self.keys_under(prefix)
        with self._failures(f"delete the objects under {prefix}"):
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
                await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """The store down, unreachable or throttling past every retry: Unavailable (503, Retry-After), not a
        500. Answers that mean a mistake here or in the setup (403, a missing bucket) stay errors."""
        try:
            yield
        except (*_OUTAGES, ClientError) as exc:
            if isinstance(exc, ClientError) and _status(exc) < 500:
                raise
            # the exception's text names the endpoint and the key, never the credentials
            log.warning("object store failed to %s: %s", doing, exc)
            raise Unavailable("the object store is unavailable; try again shortly", self._retry_after) from exc


def derived_path(session_id: int, name: str) -> str:
    """Where a derivative of a session's image is kept, relative to the prefix as a row's file_path is:
    derived/{session id}/{name}, name being {image id}-{key}.{ext} as on disk (renditions.cache_path)."""
    return f"{DERIVED_DIR}/{int(session_id)}/{name}"


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_absent(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _ABSENT or _status(exc) == 404


@asynccontextmanager
async def open_object_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The bucket's client for this process, checked once (a wrong bucket or key fails the start, not the
    first upload); closed with its connections on exit."""
    config = AioConfig(
        max_pool_connections=settings.s3_max_connections,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_timeout_s,
        # SigV4 everywhere, presigned URLs too (botocore would presign some endpoints with the old SigV2)
        signature_version="s3v4",
        read_timeout=settings.s3_timeout_s,
        # an endpoint of one's own (SeaweedFS, MinIO, Ceph) seldom has a DNS name per bucket
        s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
    )
    async with get_session().create_client(
        "s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region, config=config
    ) as client:
        store = ObjectStore(client, settings)
        with store._failures(f"reach bucket {store.bucket}"):
            await client.head_bucket(Bucket=store.bucket)
        log.info("images: objects in bucket %s at %s", store.bucket, settings.s3_endpoint or "AWS")
        yield store
