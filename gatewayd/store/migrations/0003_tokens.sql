-- Bearer tokens of the admin API. The token itself (a signed JWT) is never stored: only
-- its id (the JWT's `jti`), so that it can be listed and revoked.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    -- Quoted: a reserved word of PostgreSQL (its bare `user` is the session's role).
    "user" TEXT NOT NULL,
    -- The permissions the token was limited to, as a JSON object {area: "rwd"}; the
    -- user's own permissions still apply on top.
    permissions TEXT NOT NULL DEFAULT '{}',
    comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    expires TEXT NOT NULL,
    revoked TEXT
) STRICT;

CREATE INDEX api_tokens_user ON api_tokens ("user");

