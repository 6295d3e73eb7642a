-- Tessera store, schema v3: ended tasks can be deleted once their retention has passed.
--
-- Finds them by end time without reading every task. The index is partial: a task gets
-- its entry when it ends, so BeginTask writes no more pages than in v2 (EndTask writes
-- one more).
CREATE INDEX tasks_ended_by_time ON tasks (ended_at) WHERE ended_at IS NOT NULL;
