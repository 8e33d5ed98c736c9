-- Version 3: the raw Automerge changes of local edits that the server has not acknowledged,
-- written with the edit, so that a push reads them instead of loading every pending document.
CREATE TABLE outbox_changes (
    doc       INTEGER NOT NULL REFERENCES documents(rowid) ON DELETE CASCADE,
    -- The outbox's local_seq once this edit was counted: an acknowledgement of a batch taken at
    -- local_seq N removes the changes up to N.
    local_seq INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    -- 1 when the entry starts with the document's first change (no dependencies).
    root      INTEGER NOT NULL,
    -- The change, compressed with the record dictionary (crate::codec).
    change    BLOB NOT NULL,
    PRIMARY KEY (doc, local_seq)
) WITHOUT ROWID;
-- 1 when the server lacks this document's base (it said so): the next push sends the whole
-- history, read from the document. Documents of older stores, which have an outbox entry but no
-- outbox_changes, are read from the document too.
ALTER TABLE outbox ADD COLUMN whole INTEGER NOT NULL DEFAULT 0;
