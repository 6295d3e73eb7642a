-- Tessera store, schema v4: cluster mode. The agent's entries and consents are a copy of
-- the server's (kept under the server's ids); this row is the change-log version the copy
-- reflects, so a restarted agent resumes the server's stream where it left off.
CREATE TABLE sync_state (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version INTEGER NOT NULL CHECK (version >= 0)
) STRICT;
