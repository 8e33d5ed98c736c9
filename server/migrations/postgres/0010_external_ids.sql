-- Version 7 (PostgreSQL; mirrors migrations/sqlite/0007_external_ids.sql): register import.

-- The external id of each imported dossier the server accepted, per commune: the key of an
-- entry of the commune's register. The first record claims it; another record of the commune
-- with the same external id is refused (`external_id`).
CREATE TABLE external_ids (
    commune     TEXT NOT NULL,
    external_id TEXT NOT NULL,
    doc         BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (commune, external_id)
);
CREATE INDEX external_ids_doc ON external_ids (doc);
