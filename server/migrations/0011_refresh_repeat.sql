-- The pair a rotation issued, sealed with a key derived from the spent (parent) token, which the
-- database never holds: a second refresh with that token within the grace gets the same pair.
ALTER TABLE refresh_tokens ADD COLUMN repeat_sealed bytea;
-- For the upkeep pass that forgets sealed pairs once their grace has passed.
CREATE INDEX refresh_tokens_repeat ON refresh_tokens (used_at) WHERE repeat_sealed IS NOT NULL;
