-- tessera-server, schema v2: task events from the nodes and the cluster's revocation feed.
--
-- Units: `*_ms` columns are unix milliseconds; `deadline`, `until`, `not_after` are unix
-- seconds. Serials are lower-case hex, several in one `text` column separated by single
-- spaces (so a batch of rows binds as flat arrays: `UNNEST` cannot take ragged 2-D arrays).

-- Tasks as the nodes report them (`Node.ReportTaskEvents`). A task begins once and ends
-- once: a repeated report is a no-op. `node` is the node that first reported the task;
-- only that node may report it again (its end). `until`: the row is kept until then (the
-- task's deadline while live, when its last SVID expires once ended), plus a grace.
CREATE TABLE tasks (
    id          text   PRIMARY KEY,
    node        text   NOT NULL,
    spiffe_id   text   NOT NULL,
    client      text   NOT NULL,
    subject     text   NOT NULL,
    server      text   NOT NULL,
    scopes      text[] NOT NULL,
    consent_id  text   NOT NULL,
    begun_at_ms bigint NOT NULL,
    deadline    bigint NOT NULL,
    ended_at_ms bigint NULL,
    end_reason  text   NULL,
    serials     text   NOT NULL,
    until       bigint NOT NULL,
    CHECK ((ended_at_ms IS NULL) = (end_reason IS NULL))
);
-- WithdrawConsent ends the live tasks under the consent.
CREATE INDEX tasks_live_by_consent ON tasks (consent_id) WHERE ended_at_ms IS NULL;
-- A node's tasks.
CREATE INDEX tasks_by_node ON tasks (node, begun_at_ms);
-- ListAllTasks' order (newest first) and pruning.
CREATE INDEX tasks_by_begin ON tasks (begun_at_ms, id);
CREATE INDEX tasks_by_until ON tasks (until);

-- The revocation feed's own version counter (never the change log's: see
-- `revocation.rs`), bumped once by every transaction that adds revocations, and the feed's
-- id: chosen once, here, so every replica serves the same feed and a follower moving to
-- another replica resumes by (feed_id, version) without a snapshot.
CREATE TABLE revocation_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint  NOT NULL CHECK (version >= 0),
    feed_id   text    NOT NULL
);
INSERT INTO revocation_version (version, feed_id)
VALUES (0, 'pg-' || replace(gen_random_uuid()::text, '-', ''));

-- Revoked tasks: one row per task, with the feed version that published it.
CREATE TABLE revocations (
    task_id       text   PRIMARY KEY,
    node          text   NOT NULL,
    spiffe_id     text   NOT NULL,
    serials       text   NOT NULL,
    reason        text   NOT NULL,
    revoked_at_ms bigint NOT NULL,
    until         bigint NOT NULL,
    version       bigint NOT NULL
);
-- Replicas catch up with `WHERE version > $held`.
CREATE INDEX revocations_by_version ON revocations (version);
-- Pruning.
CREATE INDEX revocations_by_until ON revocations (until);

-- Evicted nodes' CAs: every chain through one is refused until its notAfter (`until`).
CREATE TABLE revoked_node_cas (
    serial        text   PRIMARY KEY,
    node          text   NOT NULL,
    revoked_at_ms bigint NOT NULL,
    until         bigint NOT NULL,
    version       bigint NOT NULL
);
CREATE INDEX revoked_node_cas_by_version ON revoked_node_cas (version);
CREATE INDEX revoked_node_cas_by_until ON revoked_node_cas (until);

-- Every CA the server signed for a node, not only its current one (`nodes.ca_serial`): a
-- renewed node's previous CA stays valid until its notAfter, so evicting the node revokes
-- each of its CAs still valid.
CREATE TABLE node_cas (
    serial    text   PRIMARY KEY,
    node      text   NOT NULL,
    not_after bigint NOT NULL
);
CREATE INDEX node_cas_by_node ON node_cas (node);
CREATE INDEX node_cas_by_not_after ON node_cas (not_after);
INSERT INTO node_cas (serial, node, not_after)
SELECT ca_serial, name, ca_not_after FROM nodes WHERE ca_serial IS NOT NULL;
