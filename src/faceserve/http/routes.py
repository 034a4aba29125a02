"""Every route of the service, once: method, path, handler, who may call it, the budget it spends, and its
operation in openapi.json (http/routing.py says what the access and budget values mean)."""

from __future__ import annotations

from . import (
    docs,
    downloads,
    forget,
    health,
    images,
    keys,
    live,
    observability,
    page,
    people,
    qr,
    search,
    sessions,
    setup,
)
from .routing import LEGACY, PUBLIC, READ, SEARCH, SIGNED, UNLIMITED, UPLOAD, Route

SESSION = "/api/face/sessions/{session_id}"
PERSON = SESSION + "/people/{person_id}"
LIVE = SESSION + "/live/{live_id}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", health.healthz, PUBLIC, UNLIMITED, "healthz"),
    # the web page and its files: it asks the person for a key (or reads one from a guest link's fragment)
    Route("GET", "/", page.index, PUBLIC, READ, "webPage"),
    Route("GET", "/static/{version}/{name}", page.static_file, PUBLIC, READ, "webPageFile"),
    # the contract and its page describe the API, nothing of anyone's data
    Route("GET", "/openapi.json", docs.openapi_json, PUBLIC, READ, "openapiDocument"),
    Route("GET", "/docs", docs.docs_page, PUBLIC, READ, "docsPage"),
    # counts and timings of the whole service: for the operator's scraper (a bearer token in its config)
    Route("GET", "/metrics", observability.metrics_page, "admin", READ, "metrics"),
    Route("POST", "/api/face/sessions", sessions.create_session, "write", UPLOAD, "createSession"),
    Route("GET", "/api/face/sessions", sessions.list_sessions, "search", READ, "listSessions"),
    Route("GET", SESSION, sessions.show_session, "search", READ, "showSession"),
    Route("PATCH", SESSION, sessions.rename_session, "write", UPLOAD, "renameSession"),
    Route("DELETE", SESSION, sessions.delete_session, "write", UPLOAD, "deleteSession"),
    Route("POST", SESSION + "/images", images.upload_images, "write", UPLOAD, "uploadImages"),
    Route("GET", SESSION + "/images", images.list_images, "search", READ, "listImages"),
    # a face detection and embedding each
    Route("POST", "/api/face/search", search.search_faces, "search", SEARCH, "searchFaces"),
    # the same search with the session in the path, where a balancer can route by it
    Route("POST", SESSION + "/search", search.search_faces, "search", SEARCH, "searchSession"),
    # live results: a selfie's face kept for LIVE_SEARCH_HOURS (embedded once: the search budget), its new
    # matches streamed (one read per connection, however long it stays open)
    Route("POST", SESSION + "/live", live.create_live_search, "search", SEARCH, "createLiveSearch"),
    Route("GET", LIVE + "/events", live.live_events, "search", READ, "liveSearchEvents"),
    Route("DELETE", LIVE, live.delete_live_search, "search", READ, "deleteLiveSearch"),
    Route("POST", SESSION + "/forget", forget.forget, "write", SEARCH, "forgetPerson"),
    Route("GET", "/api/face/image/{image_id}", downloads.serve_image, SIGNED, READ, "getImage", "headImage"),
    Route("DELETE", "/api/face/image/{image_id}", images.delete_image, "write", UPLOAD, "deleteImage"),
    Route("GET", "/api/face/face/{face_id}", downloads.serve_face_crop, SIGNED, READ, "getFaceCrop", "headFaceCrop"),
    Route("GET", "/api/face/resolve", images.resolve, "search", READ, "resolveIdentity"),
    Route("GET", "/storage/face_sessions/{session_id}/db/{name}", images.legacy_redirect, LEGACY, READ, "legacyImagePath"),
    Route("GET", SESSION + "/people", people.list_people, "search", READ, "listPeople"),
    Route("GET", PERSON + "/images", people.person_images, "search", READ, "personImages"),
    Route("POST", PERSON + "/merge", people.merge_people, "write", UPLOAD, "mergePeople"),
    Route("POST", PERSON + "/split", people.split_person, "write", UPLOAD, "splitPerson"),
    Route("POST", "/api/face/keys", keys.create_key, "admin", UPLOAD, "createKey"),
    Route("GET", "/api/face/keys", keys.list_keys, "admin", READ, "listKeys"),
    Route("DELETE", "/api/face/keys/{prefix}", keys.revoke_key, "admin", UPLOAD, "revokeKey"),
    # a QR code of any text (a guest link): admins only, so the service renders nothing for strangers
    Route("POST", "/api/face/qr", qr.make_qr, "admin", UPLOAD, "makeQrCode"),
    # the one-time token in the body is the credential (256 random bits, dies on use or after a day)
    Route("POST", "/api/face/setup", setup.exchange_setup_token, PUBLIC, UPLOAD, "exchangeSetupToken"),
)
