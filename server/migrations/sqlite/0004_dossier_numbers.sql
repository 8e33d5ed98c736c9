-- Version 4 (SQLite; mirrors migrations/postgres/0004_dossier_numbers.sql): dossier numbers.

-- The next sequence of each agency's counter. Blocks are cut from it under the write lock, so
-- no two blocks of an agency overlap.
CREATE TABLE number_counters (
    agency TEXT PRIMARY KEY,
    next   INTEGER NOT NULL
);

-- Blocks granted to devices. `next` is how far the device reported using it (`first..next`
-- used by its records); `acknowledged` once the device reported holding it. Never deleted.
CREATE TABLE number_blocks (
    id           INTEGER PRIMARY KEY,
    device       BLOB NOT NULL REFERENCES devices (id),
    agency       TEXT NOT NULL,
    format       TEXT NOT NULL,
    first        INTEGER NOT NULL,
    last         INTEGER NOT NULL,
    granted_at   INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    next         INTEGER NOT NULL,
    reported_at  INTEGER,
    UNIQUE (agency, first)
);
CREATE INDEX number_blocks_device ON number_blocks (device, id);

-- The dossier number of each application the server accepted, for lookup (first wins).
CREATE TABLE dossier_numbers (
    number      TEXT PRIMARY KEY,
    doc         BLOB NOT NULL,
    device      BLOB NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX dossier_numbers_doc ON dossier_numbers (doc);
