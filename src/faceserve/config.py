"""Every setting of faceserve, read once from FACESERVE_* environment variables and CLI flags."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting with a value faceserve cannot use; the message names the setting and what it accepts."""


# settings that take one of a few words
CHOICES: dict[str, tuple[str, ...]] = {
    "event_loop": ("asyncio", "uvloop"),
    "image_store": ("file", "postgres", "s3"),
    "device": ("auto", "cpu", "cuda"),
    "engine": ("auto", "onnxruntime", "openvino"),
    "precision": ("auto", "f32", "bf16"),
    "detector_precision": ("auto", "f32", "bf16"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "log_format": ("text", "json"),
}
# every number a setting holds: at least this (tests/test_config_and_storage.py checks each has one)
MINIMUM: dict[str, float] = {
    "port": 0,
    "workers": 1,
    "listen_backlog": 1,
    "db_pool_min": 0,
    "db_pool_max": 1,
    "db_acquire_timeout_s": 0.1,
    "db_command_timeout_s": 0.1,
    "db_bulk_timeout_s": 0.1,
    "inference_threads": 1,
    "max_pending_images": 1,
    "retry_after_s": 0,
    "model_threads": 0,
    "recogniser_max_batch": 1,
    "recogniser_window_ms": 0,
    "approximate_min_faces": 0,
    "opq_min_faces": 0,
    "shortlist_margin": 1,
    "index_max_batch": 1,
    "index_save_settle_s": 0.1,
    "index_save_max_lag_s": 0.1,
    "match_threshold": 0,
    "probe_min_eye_distance": 0,
    "probe_min_sharpness": 0,
    "probe_max_turn": 0,
    "search_default_limit": 1,
    "search_max_limit": 1,
    "max_upload_bytes": 1,
    "max_image_pixels": 1,
    "max_files_per_upload": 1,
    "storage_min_free_bytes": 0,
    "storage_full_retry_after_s": 0,
    "served_cache_entries": 1,
    "served_recheck_s": 0,
    "partial_upload_min_idle_s": 0,
    "page_default_limit": 1,
    "page_max_limit": 1,
    "signed_url_ttl": 1,
    "signed_url_granularity": 1,
    "min_face_size": 0,
    "detector_input_size": 32,
    "probe_detector_size": 32,
    "face_crop_padding": 0,
    "metrics_sample_s": 0.05,
    "s3_multipart_threshold": 5 * 1024 * 1024,
    "s3_multipart_chunk": 5 * 1024 * 1024,
    "s3_max_connections": 1,
    "s3_max_attempts": 1,
    "s3_timeout_s": 0.1,
    "s3_redirect_ttl_s": 0,
    "s3_accel_url_ttl_s": 1,
    "people_neighbours": 1,
    "people_min_faces": 1,
    "people_min_face_size": 0,
    "people_recluster_min_changes": 1,
    "db_watch_interval_s": 0.05,
    "db_retry_after_s": 0,
    "signing_key_refresh_s": 1,
    "api_key_cache_s": 0,
    "api_key_flush_s": 0.05,
    "session_expiry_check_s": 0.05,
    "cuda_device_id": 0,
    "detection_threshold": 0.01,
    # 0 would refuse every search, or leave renders waiting for ever
    "max_pending_searches": 1,
    "max_concurrent_renders": 1,
    "max_probe_bytes": 1024,
    "index_target_recall": 0.5,
    "keepalive_timeout_s": 0.1,
    "max_connections": 1,
    "body_idle_timeout_s": 0.1,
    "body_min_bytes_per_s": 0,
    "body_grace_s": 0,
    "max_json_bytes": 64,
    "max_json_depth": 2,
    "derivative_quality": 1,
    "people_link_similarity": 0,
    "people_min_det_score": 0,
    "people_recluster_share": 0,
    "setup_link_ttl_h": 0.01,
    "guest_link_days": 1,
    "live_search_hours": 0.01,
    "live_heartbeat_s": 0.05,
    "live_token_minutes": 1,
    "live_searches_per_session": 1,
}
# and at most this
MAXIMUM: dict[str, float] = {
    "port": 65535,
    "probe_detector_size": 4096,
    "match_threshold": 2,  # cosine distance
    "detection_threshold": 1,
    "index_target_recall": 1,
    "derivative_quality": 100,
    "people_link_similarity": 1,
    "people_min_det_score": 1,
    "people_recluster_share": 1,
}
# old names still read from the environment, with a warning: {old: new}
RENAMED = {
    "ivf_min_faces": "approximate_min_faces",
    "ivf_nprobe_margin": "shortlist_margin",
    "onnx_intra_op_threads": "model_threads",
}


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8000
    # processes serving the port together (SO_REUSEPORT); each loads its own models and indexes
    workers: int = 1
    # connections waiting to be accepted: behind nginx a burst of 1,000 clients overflowed aiohttp's 128
    # (nginx's connects timed out and it marked the node down); the kernel caps it at net.core.somaxconn
    listen_backlog: int = 2048
    # "asyncio" or "uvloop". asyncio: with 1,000 connections every request was answered within 0.63 s, while
    # uvloop left some connections waiting up to 8 s (p99 4-6 s) at about the same req/s
    # (benchmarks/connections.py, RESULTS.md); asyncio can also sendfile() large bodies
    event_loop: str = "asyncio"
    # storage root: face_sessions/{id}/db/ holds the photos, pgdata/ the embedded Postgres
    storage: Path = Path("storage")
    # with no database_url an embedded Postgres is started under storage/pgdata
    database_url: str | None = None
    # where new images' bytes go: "file" (storage/face_sessions/{id}/db/), "postgres" (table image_blobs) or
    # "s3" (objects in s3_bucket); each image is served from where it was put, so changing this strands nothing
    image_store: str = "file"
    # the S3-compatible object store (media/objects.py), opened whenever s3_bucket is set. Credentials are
    # never settings: the standard AWS chain finds them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
    # ~/.aws/credentials, an instance role). No endpoint: AWS's own for s3_region
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    # objects are {s3_prefix}/face_sessions/{id}/db/{name}; one bucket can hold several services apart
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    # bodies at least this large go up in parts of s3_multipart_chunk bytes (S3's floor for a part is 5 MiB)
    s3_multipart_threshold: int = 16 * 1024 * 1024
    s3_multipart_chunk: int = 8 * 1024 * 1024
    # connections kept open to the store per process (one per request in flight to it)
    s3_max_connections: int = 64
    # tries of a request that met a 5xx, a throttle or a broken connection, with exponential backoff and
    # jitter between them (botocore's "standard" retry mode); then the client gets 503 with Retry-After
    s3_max_attempts: int = 4
    # connect and read timeout of one try
    s3_timeout_s: float = 10.0
    # 0: a node streams an original kept in S3 itself. N > 0, for a store clients may reach: a GET of one
    # answers 308 to a presigned URL of the object that lives N seconds (capped at S3's 7 days), so bodies
    # go straight from the store (or a CDN in front of it) to the client
    s3_redirect_ttl_s: int = 0
    # behind nginx: an original kept in S3 is handed to this internal location with X-Accel-Redirect to a
    # presigned URL ("/_faceserve_s3/", proxying to the store: deploy/nginx.conf), so nginx fetches the body
    # from the store and Python never holds it; unset: the node streams it
    s3_accel_redirect: str | None = None
    # life of the presigned URLs handed to nginx: nginx uses one at once, so a short one will do
    s3_accel_url_ttl_s: int = 60
    db_pool_min: int = 1
    db_pool_max: int = 10
    # every wait on the database is bounded, so a hung Postgres (a stopped postmaster, a frozen host) gets
    # requests a 503 `unavailable` instead of holding them: for a pool connection, opening one included ...
    db_acquire_timeout_s: float = 5.0
    # ... and for the answer to one statement (then cancelled). Above the longest legitimate one: a 1M-face
    # session's embeddings take ~7 s to read (benchmarks/RESULTS.md)
    db_command_timeout_s: float = 30.0
    # ... but a statement over a whole session (reading its embeddings, a clustering's writes, its delete)
    # may take minutes at a million faces: at most this
    db_bulk_timeout_s: float = 600.0
    # how often the embedded Postgres is checked and, if its postmaster died, started again (db_recovery.py)
    db_watch_interval_s: float = 1.0
    # Retry-After of the 503 `unavailable` answered while the database is down or restarting
    db_retry_after_s: int = 5
    # absolute base for image URLs in responses ("https://photos.example.com"); unset: the address the
    # connection reached (never the client's Host header), so set it behind a proxy
    public_base_url: str | None = None
    # image URLs in responses point here instead ("https://cdn.example.com"); API URLs stay on the origin
    cdn_base_url: str | None = None
    # with a CDN: image requests without header X-Origin-Pull: <this> are redirected (308) to the CDN,
    # so only the CDN's own pulls are served by the origin
    cdn_origin_secret: str | None = None
    # "id:secret,id:secret": image URLs carry exp/kid/sig and the image endpoint demands them
    signing_keys: str | None = None
    signed_url_ttl: int = 3600
    # expiries are rounded up to this step so one image keeps one URL (and one cache entry) for a while
    signed_url_granularity: int = 600
    # seconds between reloads of the signing keys kept in Postgres; a rotated-in key starts signing only
    # once every process has had this long (times two) to load it, so no node meets an unknown kid
    signing_key_refresh_s: float = 60.0

    # API keys on every /api route (http/access.py). FACESERVE_AUTH=off is for a laptop only: no keys, no
    # signed URLs, and the service refuses to listen on anything but a loopback address
    auth: bool = True
    # true: image and face-crop URLs are plain (anyone who has or guesses an id sees the photo)
    public_images: bool = False
    # seconds a presented key's record is reused without a query: a revocation by another process (CLI,
    # other worker) takes effect within this
    api_key_cache_s: float = 5.0
    # seconds between the batched writes of keys' last use (one UPDATE per flush, not one per request)
    api_key_flush_s: float = 30.0
    # hours a one-time setup link (http://host:port/#setup=...) signs a browser in before it dies unused
    setup_link_ttl_h: float = 24.0
    # days a guest link's search key lives unless the organiser picks another (the page's default choice)
    guest_link_days: int = 30
    # seconds between looks for expired sessions: the contract deletes them within a minute
    session_expiry_check_s: float = 20.0
    # hours a live search (a guest's "show me new photos as they arrive") keeps the probe's embedding: the
    # event's day; expired ones stop matching at once and are deleted by the expiry sweep
    live_search_hours: float = 12.0
    # minutes a search's `live_token` (its probe face, sealed: core/live_tokens.py) can start a live search
    # without the selfie sent again; the service keeps nothing of a search until the guest opts in
    live_token_minutes: int = 30
    # unexpired live searches one session may hold: each is compared with every upload of the session
    # (10,000: 4.5-4.8 ms per photo on a 2-core box, README "Live results"), and a guest link's key is shared
    # by all of an event's guests, so the bound is per session
    live_searches_per_session: int = 20_000
    # seconds between the comment lines a live results stream sends while no photo arrives (proxies drop
    # idle connections: nginx's proxy_read_timeout must stay above it)
    live_heartbeat_s: float = 15.0
    # token buckets, "requests/seconds", per key (per client address without one), http/ratelimit.py.
    # With N workers each process allows 1/N. Search embeds a face per request; reads are generous
    # because guests at one venue often share one address
    rate_limits: bool = True
    rate_limit_search: str = "60/60"
    rate_limit_upload: str = "600/60"
    rate_limit_read: str = "6000/60"
    # requests answered 401 (unknown, revoked or expired keys) per client address: past it, that address
    # gets 429 for any key this process has not just seen valid, before a query is spent on it
    rate_limit_failed_auth: str = "60/60"
    # comma-separated proxy addresses or networks whose X-Forwarded-For names the client (else: the peer)
    trusted_proxies: str = ""

    models_dir: Path = Path("models")
    model_pack: str = "buffalo_s"
    # "auto" = CUDA when onnxruntime offers it, CPU otherwise; or "cpu" / "cuda"
    device: str = "auto"
    # what runs the models: "auto" = ONNX Runtime on CUDA when it offers CUDA (and device allows), else
    # OpenVINO where installed (x86-64, arm64), else ONNX Runtime on the CPU; or "onnxruntime" / "openvino"
    engine: str = "auto"
    # the recogniser's arithmetic on OpenVINO: "auto" = bf16 where the CPU has it natively (AVX-512 BF16,
    # AMX), else f32. Its bf16 embeddings stay within 0.999 cosine of f32 (tests/test_engines.py)
    precision: str = "auto"
    # the detector's, likewise; f32 by default: in bf16 it is faster, but its landmarks move up to 0.4 px,
    # and the crops aligned on them embed up to 0.006 cosine away on 28 px faces (RESULTS.md, OpenVINO)
    detector_precision: str = "f32"
    # which GPU ONNX Runtime and the CuPy index use, on a host with several
    cuda_device_id: int = 0
    detector_input_size: int = 640
    # a probe's first detector pass, at this input size when smaller than DETECTOR_INPUT_SIZE: a selfie's
    # face is large. Whenever it finds no face, none of a selfie's size, or a face small at this size (a
    # group photo), the probe is detected at DETECTOR_INPUT_SIZE as an upload is (vision/detection.py).
    # 480: close-ups found and matched as at 640, no new false match (benchmarks/closeups.py, threshold.py),
    # and the quality checks' verdicts as at 640, which 320 did not keep for turned faces (quality.py;
    # RESULTS.md, a probe's first pass)
    probe_detector_size: int = 480
    detection_threshold: float = 0.5
    # faces smaller than this (shorter box side, pixels) are not indexed: too blurry to match reliably
    min_face_size: int = 20
    inference_threads: int = 2
    # images being analysed at once (taken when fully received, so slow clients hold none); past it an
    # upload is answered 503 with Retry-After
    max_pending_images: int = 16
    # searches being analysed at once (their probes received); past it a search is answered 503 busy
    max_pending_searches: int = 16
    # largest probe photo a search takes (a selfie needs far less than an upload may be): 413 beyond
    max_probe_bytes: int = 10 * 1024 * 1024
    # resized copies and face crops rendered at once per process; more wait their turn, so memory stays
    # bounded whatever the size of the originals (a 7000x7000 PNG decodes to 150 MB)
    max_concurrent_renders: int = 2
    retry_after_s: int = 2
    # threads each model run uses, on either engine; 0 = the engine's choice (every core)
    model_threads: int = 0
    # most faces in one recogniser run; concurrent images and searches are embedded together (vision/batcher.py)
    recogniser_max_batch: int = 64
    # longest a recogniser run waits for faces of images still being detected; 0 = run what is waiting at
    # once. Only waits while others are on their way, never for a lone request (vision/batcher.py); for GPUs
    recogniser_window_ms: float = 0.0

    # sessions with at least this many faces get an approximate index on CPU (pq-rerank), if tuning reaches
    # index_target_recall (index/kinds.py).
    # Exact costs ~2 ms a query at 50k faces on 2 cores (4.4 ms at 100k), pq-rerank ~0.2 ms (RESULTS.md)
    approximate_min_faces: int = 50_000
    # sessions with at least this many faces rotate their PQ codes by OPQ: 15-25 s more to build on 2 cores
    # (once, on the build thread, then saved) for a shortlist 3-8x shorter at the same recall
    opq_min_faces: int = 50_000
    # recall@10 against exact search that tuning aims for (where no shortlist reaches it, e.g. data with no
    # neighbour structure: recall of the neighbours within the match threshold)
    index_target_recall: float = 0.99
    # the tuned shortlist factor is multiplied by this (benchmarks/RESULTS.md, Index search at scale)
    shortlist_margin: int = 2
    # GPU flat indexes in float16: half the memory, recall measured in benchmarks/search_latency.py
    gpu_float16: bool = False
    # at start, open in the background the index of every session that has a saved one (newest first)
    index_preload: bool = True
    # most query rows in one batched index search
    index_max_batch: int = 256
    # a changed index is written to its saved copy once no change came for index_save_settle_s, and at the
    # latest index_save_max_lag_s after the first change the copy lacks, so a restart (even after a crash)
    # loads instead of rebuilding from Postgres (17 s at 100k faces). Removed faces take the saved copy
    # with them at once, whatever these say
    index_save_settle_s: float = 2.0
    index_save_max_lag_s: float = 30.0

    # maximum cosine distance for a search match; measured in benchmarks/threshold.py, see README
    match_threshold: float = 0.6
    search_default_limit: int = 50
    search_max_limit: int = 500
    # a probe's face past these is answered 422 with advice instead of matched (vision/quality.py); chosen
    # with benchmarks/quality.py where the degradation alone costs 0.15+ of distance (README, Selfies as phones
    # take them); 0 (1 for the turn) turns a check off
    probe_min_eye_distance: float = 15.0
    probe_min_sharpness: float = 3.0
    probe_max_turn: float = 0.8

    # an idle keep-alive connection is closed after this many seconds, and so is one that stalls while
    # sending a request header (http/listener.py)
    keepalive_timeout_s: float = 15.0
    # connections one process keeps open; past it new ones are closed at once (well below `ulimit -n`)
    max_connections: int = 4096
    # a request body must keep coming: a read that waits longer than this fails with 408 ...
    body_idle_timeout_s: float = 10.0
    # ... and after the first body_grace_s a body arriving slower than this on average fails with 408
    body_min_bytes_per_s: int = 8 * 1024
    body_grace_s: float = 10.0

    max_upload_bytes: int = 50 * 1024 * 1024
    # decompression-bomb guard, checked from the image header before any pixel is decoded
    max_image_pixels: int = 50_000_000
    max_files_per_upload: int = 100
    # free space on the storage disk below which /healthz says "disk": "low" and `faceserve doctor` fails;
    # an upload that meets a full disk anyway is answered 507 `insufficient_storage` after this many seconds
    storage_min_free_bytes: int = 2 * 1024**3
    storage_full_retry_after_s: int = 60

    # behind nginx: image bodies on disk are handed to this internal location with X-Accel-Redirect
    # ("/_faceserve_files/", aliasing <storage>/face_sessions/), so nginx, not Python, sends them; unset: off
    accel_redirect: str | None = None
    # a .part file is swept at start only when unwritten this long: 0 for storage of one node; on storage
    # shared by a fleet, a node starting must not delete an upload another node is writing (e.g. 3600)
    partial_upload_min_idle_s: float = 0.0
    # rows of serving metadata kept per process (about 400 bytes each)
    served_cache_entries: int = 200_000
    # a 304 is answered from memory if the image's bytes were seen present less than this many seconds ago
    served_recheck_s: float = 1.0

    # JSON request bodies (session create): refused past this size (413) before they are read, and past this
    # nesting before they are parsed (400), since json.loads recurses once per level
    max_json_bytes: int = 64 * 1024
    max_json_depth: int = 32
    # DEBUG shows libraries' chatter too (initdb, loaders, warnings); INFO and up keep to faceserve's own
    log_level: str = "INFO"
    # "text" for people, "json" (one object a line) for log shippers
    log_format: str = "text"
    # one line per request on the faceserve.access logger (INFO); off saves ~5-10 % req/s on tiny images
    access_log: bool = True
    # seconds between samples of live gauges (pools, queues, indexes) for /metrics, in each worker; request
    # times counted in memory are handed to the shared histogram as often (a scrape lags by at most this)
    metrics_sample_s: float = 1.0

    page_default_limit: int = 100
    page_max_limit: int = 1000

    # resized copies (?w=, ?h=): only these sizes, so a client cannot fill the disk with arbitrary ones
    derivative_sizes: tuple[int, ...] = (64, 128, 160, 240, 320, 480, 640, 800, 1080, 1280, 1600, 2048)
    derivative_quality: int = 82
    # face crops pad the detector's box by this share of its size on each side
    face_crop_padding: float = 0.4

    # people of a session (index/clustering.py): two groups of faces become one person when the mean
    # similarity over all their pairs reaches this (chosen on labelled photos: benchmarks/people.py)
    people_link_similarity: float = 0.45
    # neighbours per face in the k-nearest-neighbour graph clustering runs on
    people_neighbours: int = 16
    # a group of fewer faces is no person yet: its faces wait for company
    people_min_faces: int = 2
    # faces smaller than this (shorter box side, px) or with a lower detection score never found, join or
    # link a person: too blurry for their embedding to be trusted on its own
    people_min_face_size: int = 32
    people_min_det_score: float = 0.6
    # a full re-clustering runs in the background once this many faces, and this share of the session's
    # faces at its last clustering, were added or removed (new faces join existing people at once meanwhile)
    people_recluster_min_changes: int = 20
    people_recluster_share: float = 0.1

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(
                    f"{env_name(name)} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})"
                )
        for name, low in MINIMUM.items():
            if getattr(self, name) < low:
                raise SettingsError(f"{env_name(name)} must be at least {low} (got {getattr(self, name)!r})")
        for name, high in MAXIMUM.items():
            if getattr(self, name) > high:
                raise SettingsError(f"{env_name(name)} must be at most {high} (got {getattr(self, name)!r})")
        if self.index_save_max_lag_s < self.index_save_settle_s:
            raise SettingsError(
                f"{env_name('index_save_max_lag_s')} must not be below {env_name('index_save_settle_s')}"
            )
        if self.db_pool_min > self.db_pool_max:
            raise SettingsError(f"{env_name('db_pool_min')} must not exceed {env_name('db_pool_max')}")
        for name in ("accel_redirect", "s3_accel_redirect"):
            prefix = getattr(self, name)
            if prefix is not None and not (prefix.startswith("/") and prefix.endswith("/")):
                raise SettingsError(f"{env_name(name)} must start and end with / (got {prefix!r})")
        if self.image_store == "s3" and not self.s3_bucket:
            raise SettingsError(f"{env_name('image_store')}=s3 needs {env_name('s3_bucket')}")
        if self.s3_redirect_ttl_s > 7 * 24 * 3600:
            raise SettingsError(f"{env_name('s3_redirect_ttl_s')} must be at most 604800 (S3's longest presigned URL)")
        if self.s3_multipart_chunk > self.s3_multipart_threshold:
            raise SettingsError(f"{env_name('s3_multipart_chunk')} must not exceed {env_name('s3_multipart_threshold')}")
        if not self.derivative_sizes or min(self.derivative_sizes) < 1:
            raise SettingsError(f"{env_name('derivative_sizes')} must list positive widths")

    @property
    def pgdata(self) -> Path:
        return self.storage / "pgdata"


_ENV_PREFIX = "FACESERVE_"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_name(field_name: str) -> str:
    return _ENV_PREFIX + field_name.upper()


def _convert(name: str, annotation: str, raw: str) -> Any:
    kind = annotation.split(" ")[0]  # "str | None" -> "str"
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple[int"):
            return tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        expected = {"int": "an integer", "float": "a number"}.get(kind, "integers separated by commas")
        raise SettingsError(f"{env_name(name)} must be {expected} (got {raw!r})") from None
    if kind == "Path":
        return Path(raw)
    if kind == "bool":
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise SettingsError(f"{env_name(name)} must be one of {', '.join(_TRUE + _FALSE)} (got {raw!r})")
        return word in _TRUE
    return raw


def load_settings(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then FACESERVE_* variables (and DATABASE_URL), then explicit overrides such as CLI flags."""
    env = os.environ if env is None else env
    types = {f.name: str(f.type) for f in fields(Settings)}
    values: dict[str, Any] = {}
    for old, new in RENAMED.items():
        raw = env.get(env_name(old))
        if raw and not env.get(env_name(new)):
            log.warning("%s is deprecated: set %s instead", env_name(old), env_name(new))
            values[new] = _convert(new, types[new], raw)
    for name, annotation in types.items():
        raw = env.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = _convert(name, annotation, raw)
    if "database_url" not in values and env.get("DATABASE_URL"):
        values["database_url"] = env["DATABASE_URL"]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    settings = replace(Settings(), **values)
    return replace(settings, storage=settings.storage.resolve(), models_dir=settings.models_dir.resolve())


