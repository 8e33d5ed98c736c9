-- Attachments (number 0008 in the shared numbering): contents in chunks next to the records,
-- and which records of which commune name them.
-- Contents are kept per commune: the key is (commune, sha256), so a hash of another commune's
-- file reveals nothing (an upload to one commune never answers from another's content).
-- De-duplication stays within a commune.
CREATE TABLE attachment_contents (
    commune     TEXT NOT NULL,
    sha256      BLOB NOT NULL,
    size        INTEGER NOT NULL,
    chunk_size  INTEGER NOT NULL,
    -- Chunks stored, from index 0 (uploads are in order; a resumed upload continues here).
    received    INTEGER NOT NULL DEFAULT 0,
    complete    INTEGER NOT NULL DEFAULT 0,
    uploaded_by BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (commune, sha256)
);
CREATE INDEX attachment_contents_by_device ON attachment_contents(uploaded_by);

CREATE TABLE attachment_chunks (
    commune TEXT NOT NULL,
    sha256  BLOB NOT NULL,
    idx     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (commune, sha256, idx),
    FOREIGN KEY (commune, sha256) REFERENCES attachment_contents(commune, sha256) ON DELETE CASCADE
);

-- A record's reference to a content (from the accepted record, at push); `live` 0 once the
-- reference is a tombstone. `changed_at` starts the grace period of an unreferenced content.
CREATE TABLE attachment_refs (
    sha256     BLOB NOT NULL,
    doc        BLOB NOT NULL,
    commune    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    live       INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (sha256, doc)
);
CREATE INDEX attachment_refs_by_commune ON attachment_refs(commune, sha256);
