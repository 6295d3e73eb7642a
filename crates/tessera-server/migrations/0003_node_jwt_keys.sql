-- tessera-server, schema v3: the public halves of the nodes' JWT-SVID signing keys.
--
-- Each node publishes its keys (`Node.PublishJwtKeys`, replacing its set); every agent
-- learns them through `Sync` (change kind `jwt_keys`, keyed by the node's name) and trusts
-- them for client and task JWT-SVIDs only. `kid` is the primary key: a key id is unique in
-- the cluster, so a node cannot publish another node's kid (verifiers would have to pick
-- between two keys of one id). Evicting a node deletes its keys in the same transaction.
-- Units: `not_after` and `published_at` are unix seconds.
CREATE TABLE node_jwt_keys (
    kid          text   PRIMARY KEY,
    node         text   NOT NULL REFERENCES nodes (name),
    x            bytea  NOT NULL CHECK (length(x) = 32),
    y            bytea  NOT NULL CHECK (length(y) = 32),
    not_after    bigint NOT NULL,
    published_at bigint NOT NULL
);
CREATE INDEX node_jwt_keys_by_node ON node_jwt_keys (node);

ALTER TABLE changes DROP CONSTRAINT changes_kind_check;
ALTER TABLE changes ADD CONSTRAINT changes_kind_check
    CHECK (kind IN ('entry', 'consent', 'node', 'jwt_keys'));
