-- The catalogue by delta (issue 15). Every version of every procedure ever published: a dossier
-- pins one, and the server checks its form against it long after the catalogue moved on.
CREATE TABLE procedure_versions (
    code      TEXT COLLATE "C" NOT NULL,
    version   BIGINT NOT NULL,
    body      TEXT NOT NULL,
    published BIGINT NOT NULL,
    PRIMARY KEY (code, version)
);
-- Versions that are no longer current reach tablets in (published, code, version) order.
CREATE INDEX procedure_versions_by_publication ON procedure_versions(published, code, version);

-- Per procedure code ever published: its current version (or its removal) and the publication
-- (catalogue version) that last changed it. Tablets read it in (changed, code) order; codes
-- compare bytewise (COLLATE "C") so the order is the same whatever the database's locale.
CREATE TABLE catalogue_entries (
    code    TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL,
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    changed BIGINT NOT NULL
);
CREATE INDEX catalogue_entries_by_change ON catalogue_entries(changed, code);

-- The working calendar's overrides (JSON list) and the publication that last changed them.
ALTER TABLE catalogue ADD COLUMN calendar TEXT NOT NULL DEFAULT '[]';
ALTER TABLE catalogue ADD COLUMN calendar_version BIGINT NOT NULL DEFAULT 0;
