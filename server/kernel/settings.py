"""Settings from environment variables (and CLI flags), validated once at start.

Every limit the server enforces is named here, so an operator can find and tune it.
A malformed value stops the server with a message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.kernel.addresses import networks


def default_data_dir() -> Path:
    """Per-user data directory (XDG on Linux)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "greenroom"


class SettingsError(Exception):
    """A setting is malformed; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENROOM_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    # --- process -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Embedded PostgreSQL data, signing keys, recordings.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port (SO_REUSEPORT).")
    listen_backlog: int = Field(4096, ge=16, le=65535,
                                description="Connections queued before accept (capped by net.core.somaxconn); "
                                            "a reconnect storm of thousands overflows a small one.")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")
    shutdown_timeout_s: float = Field(10.0, gt=0, le=300,
                                      description="Bound on draining requests, ledger batches and stream tip records.")
    public_url: str = Field("", description="External base URL (for Stripe redirects); default from host/port.")

    # --- services ------------------------------------------------------------------------
    database_url: str = Field("", validation_alias="DATABASE_URL",
                              description="PostgreSQL DSN; empty starts an embedded PostgreSQL.")
    redis_url: str = Field("", validation_alias="REDIS_URL",
                           description="Redis URL; empty runs single-node with in-process fan-out.")
    db_pool_min: int = Field(2, ge=1, le=100, description="Minimum PostgreSQL connections per worker.")
    db_pool_max: int = Field(10, ge=1, le=200, description="Maximum PostgreSQL connections per worker.")
    db_statement_timeout_ms: int = Field(15000, ge=100, description="PostgreSQL statement_timeout.")
    redis_timeout_s: float = Field(1.0, gt=0, le=30,
                                   description="Bound on connecting to Redis and on one Redis command.")
    redis_retry_s: float = Field(2.0, gt=0, le=60,
                                 description="After a Redis call fails, skip Redis this long before trying again: "
                                             "rate limits count per process, presence answers for this node, "
                                             "room publishes answer 503 or wait in the retry queue.")
    redis_pool_max: int = Field(64, ge=2, le=10000, description="Most Redis connections per worker.")
    health_timeout_s: float = Field(2.0, gt=0, le=30, description="Bound on each dependency check of /health.")
    health_cache_s: float = Field(1.0, ge=0, le=60,
                                  description="/health reuses its last dependency check this long, so anonymous "
                                              "probes cost one PostgreSQL query and one Redis ping per period "
                                              "(concurrent calls share one check; 0: check on every call).")
    metrics_token: str = Field("", description="Bearer token that opens /metrics and /v1/status from any address "
                                               "(empty: only the addresses of GREENROOM_METRICS_ALLOW).")
    metrics_allow: str = Field("127.0.0.0/8,::1",
                               description="Addresses or networks, comma-separated, that read /metrics and "
                                           "/v1/status (pid, pool figures, per-route counts) without the token; "
                                           "anyone else gets 403. Default: loopback only, for a scraper on the "
                                           "host. Behind a proxy on the same host every request comes from "
                                           "loopback: set GREENROOM_TRUST_FORWARDED_FOR, or empty this and use "
                                           "the token.")

    # --- HTTP ----------------------------------------------------------------------------
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body.")
    json_max_depth: int = Field(32, ge=2, le=128, description=(
        "Deepest nesting of objects and arrays in a REST JSON body or a socket frame (the outermost "
        "counts 1); deeper is refused: 422 VALIDATION_ERROR, or a BAD_REQUEST reply on the socket."))
    http_header_timeout_s: float = Field(30.0, ge=0.1, le=3600,
                                         description="A connection must send a whole request head (line and "
                                                     "headers) within this long of opening or of its previous "
                                                     "answer, else it is closed; idle keep-alive connections close "
                                                     "then too. Behind a proxy that keeps upstream connections, set "
                                                     "it above the proxy's upstream keep-alive (nginx: 60 s).")
    http_body_timeout_s: float = Field(30.0, ge=0.1, le=3600,
                                       description="A request body must arrive whole within this long of its head, "
                                                   "else 408 REQUEST_TIMEOUT and the connection closes.")
    http_linger_s: float = Field(2.0, ge=0, le=60,
                                 description="After answering a request whose body was not read whole (408, 413), "
                                             "the rest is read and dropped at most this long before closing, so the "
                                             "client sees the answer.")
    idempotency_lease_s: float = Field(120.0, ge=1, le=86400, description=(
        "A request with an Idempotency-Key holds its key this long; a retry meanwhile gets 409 CONFLICT "
        "(Retry-After), unless the process running it is gone (killed: its PostgreSQL lock is released). A "
        "retry after the lease takes the key over and runs the request again (its effects carry ids derived "
        "from the key, so it applies once). Longer than any request may run: at least "
        "GREENROOM_DB_STATEMENT_TIMEOUT_MS + GREENROOM_SHUTDOWN_TIMEOUT_S + every Stripe try "
        "(GREENROOM_STRIPE_TIMEOUT_S x (1 + GREENROOM_STRIPE_MAX_NETWORK_RETRIES))."))
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS (empty: same origin).")
    access_log: bool = Field(True, description="Log one JSON line per HTTP request.")

    # --- auth ----------------------------------------------------------------------------
    access_token_ttl_s: int = Field(3600, ge=30, le=86400, description="Access JWT lifetime.")
    refresh_token_ttl_s: int = Field(30 * 86400, ge=60, description="Refresh token lifetime.")
    jwt_issuer: str = Field("greenroom", description="`iss` claim of access tokens.")
    key_rotation_days: int = Field(30, ge=1, description="Signing keys older than this are rotated.")
    key_publish_delay_s: float = Field(150.0, ge=0, le=86400,
                                       description="A new signing key is published this long before it signs "
                                                   "(longer than key_cache_refresh_s, so every node knows it).")
    key_cache_refresh_s: float = Field(60.0, gt=0, le=3600,
                                       description="How often each worker reloads public keys and revocations.")
    key_miss_reload_s: float = Field(5.0, gt=0, le=3600,
                                     description="At most one key reload per interval on a token with an unknown kid.")
    keys_verify_max: int = Field(16, ge=2, le=256, description="Most public keys held for verification.")
    jwt_leeway_s: int = Field(10, ge=0, le=300, description="Clock skew tolerated on exp/nbf/iat.")
    auth_revocations_max: int = Field(100_000, ge=1,
                                      description="Most users whose older access tokens are held as revoked "
                                                  "(after a role or status change).")
    refresh_reuse_grace_s: float = Field(5.0, ge=0, le=60,
                                         description="A refresh token spent this recently gets the same new pair "
                                                     "again (two tabs refreshing at once); past it, presenting it "
                                                     "revokes the session as a stolen copy. 0: no grace.")
    sessions_per_user_max: int = Field(50, ge=1, description="Refresh-token families (logins) kept per user.")
    sessions_purge_batch: int = Field(1000, ge=1, description="Expired refresh tokens deleted per cleanup pass.")
    password_min_chars: int = Field(10, ge=8, le=256, description="Shortest password accepted.")
    password_max_chars: int = Field(256, ge=16, le=4096, description="Longest password accepted.")
    argon2_time_cost: int = Field(3, ge=1, le=20, description="argon2id iterations.")
    argon2_memory_kib: int = Field(65536, ge=8192, le=1_048_576, description="argon2id memory per hash (KiB).")
    argon2_parallelism: int = Field(4, ge=1, le=16, description="argon2id lanes.")
    password_hash_threads: int = Field(2, ge=1, le=64, description="Threads hashing passwords concurrently.")
    password_queue_max: int = Field(64, ge=1, description="Password hashes waiting or running before 503.")
    preferences_max_bytes: int = Field(16_384, ge=256, le=1_048_576, description="Largest preferences object (JSON).")

    # --- rate limits (requests per window) -----------------------------------------------
    rate_auth_per_min: int = Field(10, ge=1, description="Auth attempts per IP per minute.")
    rate_payments_per_min: int = Field(10, ge=1, description="Payment requests per user per minute.")
    rate_tips_per_min: int = Field(60, ge=1, description="Tips per user per minute.")
    rate_streaming_per_min: int = Field(100, ge=1, description="Stream management requests per user per minute.")
    rate_general_per_hour: int = Field(1000, ge=1, description="Other requests per user per hour.")
    rate_anonymous_per_min: int = Field(20, ge=1, description="Unauthenticated requests per IP per minute.")
    rate_memory_max_keys: int = Field(100_000, ge=100,
                                      description="Budgets one process keeps in memory (least recent evicted).")
    trust_forwarded_for: bool = Field(False, description="Take the client IP from X-Forwarded-For.")

    # --- ledger --------------------------------------------------------------------------
    ledger_batch_max: int = Field(1000, ge=1, le=8190, description="Most transfers applied in one batch.")
    ledger_batch_wait_ms: float = Field(0.0, ge=0, le=1000,
                                        description="Longest a batch waits for more after its first transfer; 0 "
                                                    "(group commit: a batch is what queued while the previous one "
                                                    "committed) measured best from 1 to 256 submitters.")
    ledger_queue_max: int = Field(100_000, ge=1, description="Transfers queued before submit fails fast.")
    ledger_sweep_interval_s: float = Field(1.0, gt=0, description="How often due holds are expired.")
    ledger_sweep_batch_max: int = Field(1000, ge=1, le=8190, description="Most holds one sweep expires.")
    ledger_batch_attempts: int = Field(3, ge=1, le=10,
                                       description="Tries of a batch that PostgreSQL rolled back (deadlock, "
                                                   "an id inserted concurrently by another process).")
    ledger_metadata_max_bytes: int = Field(2048, ge=64, le=65536, description="Largest metadata JSON of a transfer.")
    tip_fee_bps: int = Field(2000, ge=0, le=10000, description="Platform fee on tips, basis points.")
    tip_audit_settle_s: float = Field(60.0, ge=0, le=86400,
                                      description="The audit expects a ledger tip's stream record once the tip is "
                                                  "this old (the record follows the ledger commit at once, or with "
                                                  "the client's retry); older unrecorded tips are reported.")
    tip_max_tokens: int = Field(1_000_000, ge=1, description="Largest single tip.")
    payout_min_tokens: int = Field(1000, ge=1, description="Smallest payout request.")
    token_packs: str = Field("100:199,500:899,1000:1599,5000:6999",
                             description="Token packs sold, `tokens:price_cents` comma-separated.")
    currency: str = Field("usd", description="Currency of token packs.")
    tokens_per_currency_unit: int = Field(100, ge=1, description="Conversion rate shown with balances.")
    stripe_secret_key: str = Field("", validation_alias="STRIPE_SECRET_KEY", description="Stripe API key.")
    stripe_webhook_secret: str = Field("", validation_alias="STRIPE_WEBHOOK_SECRET",
                                       description="Stripe webhook signing secret.")
    stripe_api_base: str = Field("", validation_alias="STRIPE_API_BASE",
                                 description="Override Stripe's API address (tests, proxies).")
    stripe_timeout_s: float = Field(10.0, gt=0, le=120, description="Bound on one Stripe API call.")
    stripe_max_network_retries: int = Field(2, ge=0, le=5,
                                            description="Retries of a failed Stripe API call (same idempotency key).")
    stripe_clawback_attempts: int = Field(5, ge=1, le=20, description=(
        "Tries to claw back tokens from a wallet that is being spent at the same moment before "
        "the rest is recorded as debt."))
    stripe_waiting_events_max: int = Field(100, ge=1, le=10_000, description=(
        "Refund/dispute events held per payment until its purchase is known (events arriving "
        "before checkout completion); more are refused with 503 so Stripe retries them."))
    tip_message_max_chars: int = Field(200, ge=0, le=1000, description="Longest message attached to a tip.")
    tip_top_tippers: int = Field(5, ge=0, le=100, description="Top tippers listed in each `tip.received` event.")
    tip_record_batch_max: int = Field(500, ge=1, le=5000, description=(
        "Stream tip records written in one transaction (one update of the stream's hot total row)."))
    tip_record_wait_ms: float = Field(5.0, ge=0, le=1000, description="How long stream tip records collect.")
    tip_record_queue_max: int = Field(20_000, ge=1, description="Stream tip records waiting before tips fail fast.")
    payout_hold_timeout_s: int = Field(30 * 86400, ge=60, le=2**31 - 1, description=(
        "How long a payout request holds earnings; an unresolved one expires and releases them."))
    admin_adjust_max_tokens: int = Field(10_000_000, ge=1, description="Largest single admin wallet adjustment.")
    ledger_account_cache_max: int = Field(100_000, ge=1, description=(
        "Account ids (per user and kind) one process keeps cached; they never change once created."))

    # --- room socket ---------------------------------------------------------------------
    ws_auth_timeout_s: float = Field(5.0, gt=0, le=60, description="Time to send `auth` after connecting.")
    ws_max_frame_bytes: int = Field(65_536, ge=256, description="Largest inbound socket frame.")
    ws_max_rooms_per_conn: int = Field(16, ge=1, description="Rooms one connection may join.")
    ws_max_conns_per_user: int = Field(8, ge=1, description="Open sockets per user, on all nodes together.")
    ws_max_conns_per_node: int = Field(50_000, ge=1, description="Sockets one worker holds; beyond it the upgrade "
                                       "is refused with 503 and Retry-After so clients try again (elsewhere).")
    ws_max_guests_per_ip: int = Field(1000, ge=1, description="Guest sockets per client IP on one node "
                                                           "(a venue behind one NAT stays well inside it).")
    ws_outbound_max_bytes: int = Field(1_048_576, ge=4096,
                                       description="Unsent bytes per socket before it is closed as slow.")
    ws_heartbeat_s: float = Field(30.0, gt=0, description="Websocket ping interval.")
    room_history_max: int = Field(1000, ge=1, description="Events kept per room for resume.")
    room_history_ttl_s: int = Field(3600, ge=1, description="Age after which history is trimmed.")
    viewer_count_interval_s: float = Field(1.0, gt=0, description="Most one `room.viewers` per interval.")
    ws_coalesce_ms: float = Field(25.0, ge=0, le=1000, description=(
        "Rooms of at least GREENROOM_WS_COALESCE_MIN_MEMBERS on a node write their events to each member "
        "at most once per this interval (events in between go out in one write; an event after a quiet "
        "spell goes at once). 0 writes every loop tick."))
    ws_coalesce_min_members: int = Field(256, ge=1, description=(
        "Members of a room on one node from which its events are coalesced per GREENROOM_WS_COALESCE_MS."))
    presence_ttl_s: float = Field(15.0, gt=0, description="Presence of a dead node expires after this.")
    chat_max_chars: int = Field(500, ge=1, le=10000, description="Longest chat message.")
    chat_rate_per_10s: int = Field(10, ge=1, description="Chat messages per user per room per 10 s.")
    chat_retention_days: int = Field(30, ge=1, description="Chat kept in PostgreSQL this long.")
    chat_purge_interval_s: float = Field(3600.0, gt=0, description="How often expired chat is purged.")
    chat_purge_batch: int = Field(5000, ge=1, le=100_000, description="Rows deleted per purge statement.")
    chat_purge_max_batches: int = Field(100, ge=1, description="Purge statements per pass (the rest waits).")
    room_moderators_max: int = Field(50, ge=1, description="Moderators one room may have.")
    room_mute_max_s: int = Field(7 * 86400, ge=1, description="Longest mute.")
    room_ban_max_s: int = Field(365 * 86400, ge=1, description="Longest timed ban (omit the duration: permanent).")
    room_slow_mode_max_s: int = Field(3600, ge=1, description="Longest slow-mode interval between messages.")
    streams_open_max_per_host: int = Field(10, ge=1, description="Streams a host may have not yet ended.")
    broker_max_channels: int = Field(100_000, ge=1, description=(
        "Room streams the in-process broker keeps; beyond it the least recently used is dropped "
        "(its next use starts a new epoch, so old positions stop resuming)."))
    broker_idempotency_max_keys: int = Field(100_000, ge=1, description=(
        "Publish idempotency keys the in-process broker remembers (each up to 300 s); the oldest "
        "beyond it are forgotten."))
    broker_subscribe_timeout_s: float = Field(5.0, gt=0, le=60,
                                              description="How long a room subscription waits for Redis.")
    broker_reconnect_max_s: float = Field(5.0, gt=0, le=300,
                                          description="Longest pause between Redis pub/sub reconnect attempts.")
    broker_ping_interval_s: float = Field(5.0, gt=0, le=300, description=(
        "Redis pub/sub ping interval; no answer for 3 intervals counts as a dead connection."))
    presence_refresh_batch: int = Field(500, ge=1, le=10_000,
                                        description="Presence entries refreshed per Redis call in a heartbeat.")
    presence_purge_batch: int = Field(1000, ge=1, le=100_000,
                                      description="Expired presence entries dropped per Redis call.")
    presence_members_max: int = Field(1000, ge=1, le=100_000, description="Most members one presence listing returns.")
    ws_volatile_drop_bytes: int = Field(65_536, ge=1024, description=(
        "Unsent bytes per socket above which volatile events (viewer counts) are dropped, not queued."))
    ws_join_backlog_max: int = Field(1000, ge=1, description=(
        "Live events held per joining socket while its history is read; beyond it the socket is closed as slow."))
    ws_close_timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "How long a closing socket may take to send its close frame before its buffer is dropped."))
    hub_unsent_max: int = Field(10_000, ge=1, description="Room events of committed changes (stream updates, "
                                "bans, mutes) held for a retry while the broker is unreachable; beyond it the oldest "
                                "are dropped (clients refetch state on their next join).")
    hub_gap_buffer_max: int = Field(1000, ge=1, description=(
        "Live events a room holds on a node while a gap in pub/sub delivery is filled from history."))
    ws_ops_per_10s: int = Field(200, ge=1, description=(
        "Frames one socket may send per 10 s; beyond it they get RATE_LIMIT_EXCEEDED replies."))

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, v: str) -> str:
        networks(v)  # raises ValueError naming the bad entry
        return v

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str) and v else v

    @property
    def packs(self) -> dict[int, int]:
        """Token packs as {tokens: price_cents}."""
        out: dict[int, int] = {}
        for part in self.token_packs.split(","):
            tokens, price = part.split(":")
            out[int(tokens)] = int(price)
        return out


def env_name(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    return alias if isinstance(alias, str) else f"GREENROOM_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply overrides (CLI flags), validate. Raises SettingsError."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)
        settings.packs  # noqa: B018 - validates the pack list at start
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            name = env_name(field) if field in Settings.model_fields else field
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise SettingsError(f"invalid settings: GREENROOM_TOKEN_PACKS: {exc}") from None
    if settings.db_pool_min > settings.db_pool_max:
        raise SettingsError("invalid settings: GREENROOM_DB_POOL_MIN exceeds GREENROOM_DB_POOL_MAX")
    if settings.idempotency_lease_s < longest_request_s(settings):
        raise SettingsError(f"invalid settings: GREENROOM_IDEMPOTENCY_LEASE_S must be at least "
                            f"{longest_request_s(settings):g} (the statement timeout, the shutdown drain and every "
                            "Stripe try): a shorter lease lets a retry run a request still running")
    return settings


def longest_request_s(settings: Settings) -> float:
    """What bounds one keyed request's run, as far as settings do: its slowest statement, the
    shutdown drain it may still be in, and a Stripe call with all its retries."""
    stripe = settings.stripe_timeout_s * (1 + settings.stripe_max_network_retries)
    return settings.db_statement_timeout_ms / 1000 + settings.shutdown_timeout_s + stripe


def settings_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = "per-user data dir" if name == "data_dir" else info.default
        rows.append(f"| `{env_name(name)}` | `{default}` | {info.description or ''} |")
    return "\n".join(rows)
