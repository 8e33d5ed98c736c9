-- The catalogue by delta (issue 15). Every version of every procedure ever published: a dossier
-- pins one, and the server checks its form against it long after the catalogue moved on.
CREATE TABLE procedure_versions (
    code      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    body      TEXT NOT NULL,
    published INTEGER NOT NULL,
    PRIMARY KEY (code, version)
);
-- Versions that are no longer current reach tablets in (published, code, version) order.
CREATE INDEX procedure_versions_by_publication ON procedure_versions(published, code, version);

-- Per procedure code ever published: its current version (or its removal) and the publication
-- (catalogue version) that last changed it. Tablets read it in (changed, code) order.
CREATE TABLE catalogue_entries (
    code    TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL
);
CREATE INDEX catalogue_entries_by_change ON catalogue_entries(changed, code);

-- The working calendar's overrides (JSON list) and the publication that last changed them.
ALTER TABLE catalogue ADD COLUMN calendar TEXT NOT NULL DEFAULT '[]';
ALTER TABLE catalogue ADD COLUMN calendar_version INTEGER NOT NULL DEFAULT 0;
