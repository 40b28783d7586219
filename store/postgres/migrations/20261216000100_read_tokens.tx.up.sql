-- Scoped read tokens: each lets its holder read the analytics and metadata of
-- the ads in ad_ids only. Only the SHA-256 of the token is kept: the token
-- itself is shown once, when it is created. expires_at NULL: never expires.
CREATE TABLE read_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    ad_ids      text[] NOT NULL,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
