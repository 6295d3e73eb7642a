-- Tessera store, schema v6: task events the server rejected (a dead-letter table).
--
-- The server rejects a journaled event it can never store (malformed, or for a task id
-- another node reported first). Resending it cannot help, and keeping it at the head of
-- the journal would hold back every event after it, task ends among them. So it leaves
-- the journal, in the same transaction as the acknowledgement that rejected it, and is
-- kept here for an operator to look at: the event as it was journaled, why, and when.
-- Bounded: only the newest 10,000 rows are kept (tessera_store::MAX_REJECTED_EVENTS).
CREATE TABLE task_events_rejected (
    id          INTEGER PRIMARY KEY,
    -- The event's journal seq (task_events.seq) when it was sent.
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('begun', 'ended')),
    task_id     TEXT    NOT NULL,
    -- The event's fields as JSON, as in task_events.body.
    body        TEXT    NOT NULL,
    reason      TEXT    NOT NULL CHECK (reason IN ('malformed', 'task_of_another_node', 'unknown')),
    -- The server's explanation, truncated.
    message     TEXT    NOT NULL,
    rejected_at INTEGER NOT NULL
) STRICT;
