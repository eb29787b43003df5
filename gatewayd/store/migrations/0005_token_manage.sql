-- Whether an API token may list and revoke tokens (its user's; everyone's when its
-- permissions include the users area). Tokens issued before this migration may not:
-- managing tokens is a right given explicitly (`manageTokens`), never by default.
ALTER TABLE api_tokens ADD COLUMN manage_tokens INTEGER NOT NULL DEFAULT 0
    CHECK (manage_tokens IN (0, 1));
