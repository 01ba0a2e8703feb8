-- Accounts, refresh-token sessions and JWT signing keys.

CREATE TABLE users (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email              text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    username           text        CHECK (username ~ '^[A-Za-z0-9_]{3,32}$'),
    password_hash      text        NOT NULL,
    display_name       text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    bio                text        CHECK (length(bio) <= 2000),
    profile_image_url  text        CHECK (length(profile_image_url) <= 2048),
    role               text        NOT NULL DEFAULT 'viewer' CHECK (role IN ('viewer', 'performer', 'admin')),
    status             text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'banned')),
    country            text        CHECK (country ~ '^[A-Z]{2}$'),
    date_of_birth      date,
    email_verified     boolean     NOT NULL DEFAULT false,
    preferences        jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(preferences) = 'object'),
    -- Access tokens issued before this instant are refused (set on a role or status change).
    tokens_valid_after timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE UNIQUE INDEX users_username_lower ON users (lower(username)) WHERE username IS NOT NULL;
CREATE INDEX users_tokens_valid_after ON users (tokens_valid_after) WHERE tokens_valid_after IS NOT NULL;

-- A family is one login: every refresh token rotated from it shares the family, and revoking
-- the family (logout, reuse of a spent token, account disabled) ends them all.
CREATE TABLE refresh_families (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Expiry of the newest token; past it the whole family is deleted by the cleanup pass.
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('logout', 'reuse', 'disabled', 'evicted'))
);
CREATE INDEX refresh_families_user ON refresh_families (user_id, created_at);
CREATE INDEX refresh_families_expires ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),  -- SHA-256 of the opaque token
    family_id  uuid        NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    parent_id  uuid        REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_parent ON refresh_tokens (parent_id) WHERE parent_id IS NOT NULL;

-- Signing keys live here so every worker and node signs and verifies with the same set.
CREATE TABLE signing_keys (
    kid          text        PRIMARY KEY,
    alg          text        NOT NULL CHECK (alg IN ('EdDSA', 'RS256')),
    private_pem  text        NOT NULL,
    public_pem   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Signs from this instant: a rotated-in key is published before it is used.
    activates_at timestamptz NOT NULL DEFAULT now(),
    -- Stops signing at this instant; verifies until its last tokens expire.
    retired_at   timestamptz
);
CREATE INDEX signing_keys_activates ON signing_keys (activates_at);
