-- Procedure catalogue version 2 (issue 15).
-- The current version of each procedure: its whole JSON in `body` (NULL for a row written
-- before version 2, read from the version 1 columns), its folded name for search.
ALTER TABLE procedures ADD COLUMN version     INTEGER NOT NULL DEFAULT 1;
ALTER TABLE procedures ADD COLUMN sector      TEXT NOT NULL DEFAULT '';
ALTER TABLE procedures ADD COLUMN name_folded TEXT NOT NULL DEFAULT '';
ALTER TABLE procedures ADD COLUMN body        TEXT;
CREATE INDEX procedures_by_sector ON procedures(sector, name_folded, code);

-- Every version of a procedure this device has seen, kept after the catalogue moves on or
-- removes the procedure: a dossier is checked against the version it pinned.
CREATE TABLE procedure_versions (
    code    TEXT NOT NULL,
    version INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (code, version)
) WITHOUT ROWID;

-- Weekend days the offices work (compensatory working days); days off stay in `holidays`.
CREATE TABLE compensatory_days (
    day TEXT PRIMARY KEY
) WITHOUT ROWID;
