-- 0006: one-time setup links (`#setup=...`) that sign an organiser's browser in (core/setup_links.py).
-- Only a token's SHA-256 is kept; a token works once (used_at) and until expires_at.
CREATE TABLE setup_tokens (
    id          bigserial   PRIMARY KEY,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
