-- Version 4 (PostgreSQL; mirrors migrations/sqlite/0004_dossier_numbers.sql): dossier numbers.

-- The next sequence of each agency's counter. Blocks are cut from it under this row's lock,
-- held until commit, so no two blocks of an agency overlap whatever the replicas.
CREATE TABLE number_counters (
    agency TEXT PRIMARY KEY,
    next   BIGINT NOT NULL
);

-- Blocks granted to devices. `next` is how far the device reported using it (`first..next`
-- used by its records); `acknowledged` once the device reported holding it. Never deleted.
CREATE TABLE number_blocks (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device       BYTEA NOT NULL REFERENCES devices (id),
    agency       TEXT NOT NULL,
    format       TEXT NOT NULL,
    first        BIGINT NOT NULL,
    last         BIGINT NOT NULL,
    granted_at   BIGINT NOT NULL,
    acknowledged BOOLEAN NOT NULL DEFAULT FALSE,
    next         BIGINT NOT NULL,
    reported_at  BIGINT,
    UNIQUE (agency, first)
);
CREATE INDEX number_blocks_device ON number_blocks (device, id);

-- The dossier number of each application the server accepted, for lookup (first wins).
CREATE TABLE dossier_numbers (
    number      TEXT PRIMARY KEY,
    doc         BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX dossier_numbers_doc ON dossier_numbers (doc);
