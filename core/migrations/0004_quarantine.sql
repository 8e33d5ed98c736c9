-- Version 4: documents set aside (quarantine), what officers did about them (audit), and the
-- server's receive time of each change.

-- A document set aside: refused by the server (`outgoing`: its local changes stay in the outbox
-- but are not pushed) or pulled and not readable by this build (`incoming`: its raw changes are
-- kept here, so the feed cursor moves on and the changes are retried).
CREATE TABLE quarantine (
    rowid       INTEGER PRIMARY KEY,
    -- The record id. An incoming document whose id cannot be read gets one made of the first
    -- 16 bytes of the SHA-256 of its changes (`id_known` 0), so that it is kept once.
    record_id   BLOB NOT NULL,
    id_known    INTEGER NOT NULL DEFAULT 1,
    kind        INTEGER NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
    -- Why: the server's refusal code (outgoing) or this device's (incoming).
    code        TEXT NOT NULL,
    message     TEXT NOT NULL,
    -- Device time, corrected by the offset to the server's clock (ms since the epoch).
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    -- Times it was refused (outgoing) or tried (incoming).
    attempts    INTEGER NOT NULL DEFAULT 1,
    -- Incoming: the raw changes, length-prefixed and compressed (crate::codec); NULL when they
    -- were over the quarantine's bound and dropped (the entry stays listed).
    changes     BLOB,
    -- Incoming: uncompressed bytes of `changes` (what the bound counts).
    bytes       INTEGER NOT NULL DEFAULT 0,
    -- Incoming: server receive time of the newest kept change.
    received_at INTEGER,
    -- Incoming: the build (core version, protocol, app version) that last tried the changes; a
    -- sync by another build tries them again.
    tried_by    TEXT,
    UNIQUE (record_id, direction)
);

-- What officers decided about quarantined records (discard, copy as new): who, when, what, why.
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    officer        TEXT NOT NULL,
    action         TEXT NOT NULL,
    record_id      BLOB,
    kind           INTEGER NOT NULL,
    direction      TEXT NOT NULL,
    code           TEXT NOT NULL,
    message        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    -- Copy as new: the record that replaces it.
    replacement_id BLOB
);

-- Server receive time (ms, server clock) of each change, by change hash: the feed document's
-- time for pulled changes, the response's time for this device's own once acknowledged.
CREATE TABLE change_receipts (
    hash        BLOB PRIMARY KEY,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
