-- communesync server schema, version 1 (SQLite). Hashes and ids are BLOBs, times are INTEGER
-- milliseconds since the Unix epoch. Mirrors migrations/postgres/0001_init.sql.

CREATE TABLE communes (
    code     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    -- Last `seq` allocated in this commune's change feed.
    feed_seq INTEGER NOT NULL DEFAULT 0
);

-- Last `gseq` allocated in the province-wide feed (one row).
CREATE TABLE feed_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO feed_counter (id, seq) VALUES (1, 0);

CREATE TABLE enrollment_codes (
    code_hash  BLOB PRIMARY KEY,
    commune    TEXT REFERENCES communes (code), -- NULL: province scope
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);

CREATE TABLE devices (
    id             BLOB PRIMARY KEY,
    token_hash     BLOB NOT NULL UNIQUE,
    commune        TEXT REFERENCES communes (code), -- NULL: province scope
    label          TEXT NOT NULL,
    revoked        INTEGER NOT NULL DEFAULT 0,
    enrolled_at    INTEGER NOT NULL,
    last_sync_at   INTEGER,
    changes_pushed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_commune ON devices (commune);

CREATE TABLE admin_tokens (
    token_hash BLOB PRIMARY KEY,
    label      TEXT NOT NULL
);

-- Fixed-window failure counters, one row per source.
CREATE TABLE enrollment_failures (
    source     TEXT PRIMARY KEY,
    window_end INTEGER NOT NULL,
    failures   INTEGER NOT NULL
);
CREATE INDEX enrollment_failures_window_end ON enrollment_failures (window_end);

CREATE TABLE documents (
    id            BLOB PRIMARY KEY,
    commune       TEXT NOT NULL REFERENCES communes (code),
    kind          INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE INDEX documents_commune ON documents (commune);

CREATE TABLE changes (
    commune     TEXT NOT NULL REFERENCES communes (code),
    seq         INTEGER NOT NULL,
    gseq        INTEGER NOT NULL UNIQUE,
    doc         BLOB NOT NULL REFERENCES documents (id),
    hash        BLOB NOT NULL,
    device      BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    deps        BLOB NOT NULL, -- concatenated 32-byte hashes
    bytes       BLOB NOT NULL, -- last: reading the columns before it never touches overflow pages
    PRIMARY KEY (commune, seq),
    UNIQUE (doc, hash)
);
CREATE INDEX changes_doc_seq ON changes (doc, seq);

-- The province catalogue: one row, replaced with a new version.
CREATE TABLE catalogue (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    json    TEXT NOT NULL
);
