-- Tessera store, schema v2: fewer B-tree pages written per durable write.
--
-- Every commit is fsynced, and its cost grows with the pages it writes to the WAL: a
-- BeginTask touched 13 pages in v1. Each table row and each index entry is a page (the
-- last leaf of its B-tree), so v2 drops what no query reads and stores two tables in their
-- primary-key B-tree instead of a rowid B-tree plus a primary-key index (WITHOUT ROWID).
-- BeginTask now writes 8 pages.
--
-- The store runs this with foreign key enforcement off (SQLite's documented procedure for
-- rebuilding a table that others reference) and checks every foreign key before it
-- commits.

-- No query reads these: the audit log is read by sequence number, and the agent keeps
-- live task deadlines in memory.
DROP INDEX audit_by_at;
DROP INDEX audit_by_kind;
DROP INDEX tasks_live_by_deadline;

-- Tasks, keyed by id in one B-tree. Ids are ULIDs (or UUIDv7s), so new tasks append to
-- the last leaf.
CREATE TABLE tasks_v2 (
    id         TEXT    PRIMARY KEY NOT NULL,
    client     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    server     TEXT    NOT NULL,
    scopes     TEXT    NOT NULL CHECK (json_valid(scopes)), -- JSON array, a subset of the consent's
    purpose    TEXT    NOT NULL,
    consent_id TEXT    NOT NULL REFERENCES consents (id),
    pid        INTEGER NOT NULL,                           -- the runtime process that began it
    begun_at   INTEGER NOT NULL,
    deadline   INTEGER NOT NULL,
    ended_at   INTEGER NULL,
    end_reason TEXT    NULL,
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
) STRICT, WITHOUT ROWID;
INSERT INTO tasks_v2 (id, client, subject, server, scopes, purpose, consent_id, pid, begun_at,
                      deadline, ended_at, end_reason)
SELECT id, client, subject, server, scopes, purpose, consent_id, pid, begun_at, deadline,
       ended_at, end_reason
FROM tasks;

-- Every SVID issued for a task, keyed by serial in one B-tree. Issuance order was the rowid
-- in v1; it is now explicit: `n` is the SVID's position among its task's (1 for the one
-- issued at BeginTask), and the (task_id, n) index both finds a task's SVIDs and refuses
-- two at one position.
CREATE TABLE task_svids_v2 (
    serial    TEXT    PRIMARY KEY NOT NULL,
    task_id   TEXT    NOT NULL REFERENCES tasks (id),
    n         INTEGER NOT NULL CHECK (n >= 1),
    spiffe_id TEXT    NOT NULL,
    not_after INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO task_svids_v2 (serial, task_id, n, spiffe_id, not_after)
SELECT serial, task_id, row_number() OVER (PARTITION BY task_id ORDER BY rowid), spiffe_id,
       not_after
FROM task_svids;

DROP TABLE task_svids;
DROP TABLE tasks;
ALTER TABLE tasks_v2 RENAME TO tasks;
ALTER TABLE task_svids_v2 RENAME TO task_svids;
CREATE INDEX tasks_by_consent ON tasks (consent_id);
CREATE INDEX tasks_by_client ON tasks (client, begun_at);
CREATE UNIQUE INDEX task_svids_by_task ON task_svids (task_id, n);
