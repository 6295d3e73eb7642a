-- Tessera store, schema v5: cluster mode's task-event journal (an outbox).
--
-- A cluster-mode agent reports every task begin and end to the server. Each event is
-- written here in the same transaction as the task row's change, so a crash (kill -9,
-- power loss) can lose neither; the reporter sends rows in `seq` order and deletes them
-- once the server acknowledged them durable. AUTOINCREMENT: a seq is never reused, even
-- after every row was acknowledged and deleted (a plain rowid would start again from
-- the largest left, and an acknowledgement could then cover an event never sent).
-- A standalone agent writes nothing here.
CREATE TABLE task_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL CHECK (kind IN ('begun', 'ended')),
    task_id TEXT    NOT NULL,
    -- The event's fields as JSON (see tessera_store::TaskEvent).
    body    TEXT    NOT NULL
) STRICT;
