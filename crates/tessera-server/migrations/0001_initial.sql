-- tessera-server, schema v1, for PostgreSQL.
--
-- Units as in the agent's SQLite store: every `*_at`, `expires_at` and `*_not_after` column
-- is unix seconds, except `audit.at_ms` and `changes.at_ms` (unix milliseconds). Records
-- are keyed by the ids the agents know them by (ULIDs, node names), so a record keeps its
-- identity from the server to every agent's copy.

-- The change counter: one row whose `version` every writing transaction bumps, last,
-- just before it commits. See `change.rs` for why versions come from here and not from a
-- sequence. `pruned_through`: the change log holds no change at or below this version.
CREATE TABLE change_version (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version        bigint  NOT NULL CHECK (version >= 0),
    pruned_through bigint  NOT NULL CHECK (pruned_through >= 0 AND pruned_through <= version)
);
INSERT INTO change_version (version, pruned_through) VALUES (0, 0);

-- The change log: which record each version changed. It names the record, and readers
-- take the record's state from its table in the same snapshot (see `change.rs`), so the
-- log never holds a second copy of a record that could disagree with the table.
CREATE TABLE changes (
    version bigint PRIMARY KEY,
    at_ms   bigint NOT NULL,
    kind    text   NOT NULL CHECK (kind IN ('entry', 'consent', 'node')),
    key     text   NOT NULL
);
-- Pruning by age finds its cut-off here.
CREATE INDEX changes_by_time ON changes (at_ms);

-- Registration entries, as in the agent's store. The selector set is stored sorted and
-- deduplicated; its SHA-256 (of its JSON form) makes the uniqueness check an index of
-- fixed-width keys (a set can reach 32 KiB, past what a B-tree entry may hold).
CREATE TABLE entries (
    id               text    PRIMARY KEY,
    kind             text    NOT NULL CHECK (kind IN ('client', 'server')),
    client           text    NOT NULL,
    selectors        text[]  NOT NULL CHECK (cardinality(selectors) >= 1),
    selectors_sha256 bytea   NOT NULL CHECK (length(selectors_sha256) = 32),
    svid_ttl_secs    bigint  NULL CHECK (svid_ttl_secs IS NULL OR svid_ttl_secs > 0),
    created_at       bigint  NOT NULL,
    UNIQUE (kind, client, selectors_sha256)
);
-- list_entries' order.
CREATE INDEX entries_by_created ON entries (created_at, id);

-- Consent records, as in the agent's store.
CREATE TABLE consents (
    id           text   PRIMARY KEY,
    client       text   NOT NULL,
    subject      text   NOT NULL,
    server       text   NOT NULL,
    scopes       text[] NOT NULL CHECK (cardinality(scopes) >= 1),
    expires_at   bigint NOT NULL,
    granted_by   text   NOT NULL,
    granted_at   bigint NOT NULL,
    withdrawn_at bigint NULL
);
-- list_consents: all of them, or one client's, in grant order.
CREATE INDEX consents_by_grant ON consents (granted_at, id);
CREATE INDEX consents_by_client ON consents (client, granted_at, id);

-- Attested nodes. `selectors` are what attestation proved (`join_token:<token id>`,
-- `k8s:node-name:…`), `attestation` the attestor's evidence summary (never a token).
-- `ca_serial` / `ca_not_after`: the node's current intermediate CA, published as revoked
-- when the node is evicted.
CREATE TABLE nodes (
    name          text   PRIMARY KEY,
    attested_by   text   NOT NULL CHECK (attested_by IN ('join_token', 'k8s_psat')),
    selectors     text[] NOT NULL,
    attestation   jsonb  NOT NULL,
    status        text   NOT NULL CHECK (status IN ('active', 'evicted')),
    ca_serial     text   NULL,
    ca_not_after  bigint NULL,
    registered_at bigint NOT NULL,
    attested_at   bigint NOT NULL,
    evicted_at    bigint NULL,
    CHECK ((status = 'evicted') = (evicted_at IS NOT NULL)),
    CHECK ((ca_serial IS NULL) = (ca_not_after IS NULL))
);

-- Join tokens: only the SHA-256 of the token is stored, so the table's contents (a
-- backup, a replica, a log of the table) attest no node. Single use: `used_at` is set by
-- the one transaction that consumes it.
CREATE TABLE join_tokens (
    id           text   PRIMARY KEY,
    token_sha256 bytea  NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    node         text   NULL,
    created_by   text   NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    used_at      bigint NULL,
    used_by      text   NULL,
    CHECK ((used_at IS NULL) = (used_by IS NULL))
);
-- Pruning expired tokens.
CREATE INDEX join_tokens_by_expiry ON join_tokens (expires_at);

-- The audit log. Append-only; `seq` orders it (see `audit.rs` on what that order promises).
CREATE TABLE audit (
    seq    bigserial PRIMARY KEY,
    at_ms  bigint    NOT NULL,
    kind   text      NOT NULL,
    actor  text      NOT NULL,
    detail jsonb     NOT NULL
);
-- Pruning by age.
CREATE INDEX audit_by_time ON audit (at_ms);
