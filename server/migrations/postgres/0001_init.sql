-- communesync server schema, version 1 (PostgreSQL). Hashes and ids are BYTEA, times are BIGINT
-- milliseconds since the Unix epoch. Mirrors migrations/sqlite/0001_init.sql. Applied by the
-- server inside one transaction under an advisory lock; the version lives in schema_migrations.

CREATE TABLE communes (
    code     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    -- Last `seq` allocated in this commune's change feed. Ingest allocates under this row's
    -- lock, held until commit, so seq order is commit order.
    feed_seq BIGINT NOT NULL DEFAULT 0
);

-- Last `gseq` allocated in the province-wide feed (one row, same locking rule).
CREATE TABLE feed_counter (
    id  SMALLINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO feed_counter (id, seq) VALUES (1, 0);

CREATE TABLE enrollment_codes (
    code_hash  BYTEA PRIMARY KEY,
    commune    TEXT REFERENCES communes (code), -- NULL: province scope
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE devices (
    id             BYTEA PRIMARY KEY,
    token_hash     BYTEA NOT NULL UNIQUE,
    commune        TEXT REFERENCES communes (code), -- NULL: province scope
    label          TEXT NOT NULL,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE,
    enrolled_at    BIGINT NOT NULL,
    last_sync_at   BIGINT,
    changes_pushed BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_commune ON devices (commune);

CREATE TABLE admin_tokens (
    token_hash BYTEA PRIMARY KEY,
    label      TEXT NOT NULL
);

-- Fixed-window failure counters, one row per source.
CREATE TABLE enrollment_failures (
    source     TEXT PRIMARY KEY,
    window_end BIGINT NOT NULL,
    failures   BIGINT NOT NULL
);
CREATE INDEX enrollment_failures_window_end ON enrollment_failures (window_end);

CREATE TABLE documents (
    id            BYTEA PRIMARY KEY,
    commune       TEXT NOT NULL REFERENCES communes (code),
    kind          SMALLINT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE INDEX documents_commune ON documents (commune);

CREATE TABLE changes (
    commune     TEXT NOT NULL REFERENCES communes (code),
    seq         BIGINT NOT NULL,
    gseq        BIGINT NOT NULL UNIQUE,
    doc         BYTEA NOT NULL REFERENCES documents (id),
    hash        BYTEA NOT NULL,
    device      BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    deps        BYTEA NOT NULL, -- concatenated 32-byte hashes
    bytes       BYTEA NOT NULL,
    PRIMARY KEY (commune, seq),
    UNIQUE (doc, hash)
);
CREATE INDEX changes_doc_seq ON changes (doc, seq);

-- The province catalogue: one row, replaced with a new version.
CREATE TABLE catalogue (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL,
    json    TEXT NOT NULL
);
