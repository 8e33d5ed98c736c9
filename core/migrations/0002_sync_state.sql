-- Version 2: sync bookkeeping.
-- The heads of each document that the provincial server has acknowledged: what to push next is
-- every change after them.
CREATE TABLE server_heads (
    doc   INTEGER PRIMARY KEY REFERENCES documents(rowid) ON DELETE CASCADE,
    heads BLOB NOT NULL
);
-- Server receive time (ms) of the newest change pulled for each document: device clocks lie.
ALTER TABLE documents ADD COLUMN last_pulled_at INTEGER;
