-- Attachments (number 0008 in the shared numbering): contents of scans and photos, stored in
-- this SQLCipher file as chunk rows (encrypted with the store key, deleted by a wipe, written
-- in the same WAL as the records), and the references the records hold, projected.

-- One content, addressed by its SHA-256. Dedupe: one row per hash whatever the number of
-- references to it.
CREATE TABLE attachment_contents (
    rowid      INTEGER PRIMARY KEY,
    sha256     BLOB NOT NULL UNIQUE,
    size       INTEGER NOT NULL,
    -- 1 when every chunk is here (a download fills it chunk by chunk and may stop halfway).
    complete   INTEGER NOT NULL,
    -- 1 when the server is known to hold it whole (uploaded here, or downloaded from it): only
    -- then may the cache evict it.
    on_server  INTEGER NOT NULL DEFAULT 0,
    -- Upload order (crate::attachment::AttachmentCategory::priority), lowest first.
    priority   INTEGER NOT NULL DEFAULT 2,
    -- Device time of the last attach, open or download (ms): the cache evicts the oldest.
    last_used  INTEGER NOT NULL
);

-- The bytes, in rows of crate::attachment::STORE_CHUNK bytes (the last one shorter).
CREATE TABLE attachment_chunks (
    content INTEGER NOT NULL REFERENCES attachment_contents(rowid) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    UNIQUE (content, idx)
);

-- The references records hold (projected at every write of a record; never removed: a removal
-- is a tombstone in the record, `live` 0).
CREATE TABLE attachment_refs (
    doc      INTEGER NOT NULL REFERENCES documents(rowid) ON DELETE CASCADE,
    ref_id   TEXT NOT NULL,
    sha256   BLOB NOT NULL,
    size     INTEGER NOT NULL,
    live     INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    PRIMARY KEY (doc, ref_id)
);
CREATE INDEX attachment_refs_by_hash ON attachment_refs(sha256);
