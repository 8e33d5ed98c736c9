-- communesync device store, schema version 5: dossier numbers (see core/src/numbering).

-- Blocks of sequence numbers the server granted this device. `first..next` are used, each by
-- exactly one record of this store (`number_uses`), taken in the transaction that created it;
-- `next..=last` are unused. Rows are never deleted: they are the device's accounting.
CREATE TABLE number_blocks (
    id          INTEGER PRIMARY KEY, -- the server's block id
    agency      TEXT NOT NULL,
    format      TEXT NOT NULL,
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    next        INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    -- The `next` the server last received in a report (NULL: never): a used-up block the
    -- server knows all about is no longer reported.
    reported    INTEGER,
    CHECK (first <= next AND next <= last + 1)
);

-- Every number this device gave, with the record it went to (block numbers and fallbacks).
CREATE TABLE number_uses (
    number   TEXT PRIMARY KEY,
    doc      BLOB NOT NULL,  -- the record id
    block    INTEGER REFERENCES number_blocks (id),
    seq      INTEGER,        -- within the block; NULL for a fallback
    used_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX number_uses_by_time ON number_uses (used_at);

-- Every application's number, mine or pulled, for lookup.
ALTER TABLE applications ADD COLUMN dossier_number TEXT;
CREATE INDEX applications_by_number ON applications (dossier_number)
    WHERE dossier_number IS NOT NULL;
