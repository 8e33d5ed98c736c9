-- communesync device store, schema version 8: register import (see core/src/register_import).

-- The external id of every imported dossier this store holds (imported here or received by
-- sync), for the idempotent re-run: an entry whose commune and external id are here is skipped.
-- One row per document; the marker never changes, so the row is written once.
CREATE TABLE imported_records (
    doc          INTEGER PRIMARY KEY REFERENCES documents(rowid) ON DELETE CASCADE,
    commune_code TEXT NOT NULL,
    external_id  TEXT NOT NULL
);
CREATE INDEX imported_records_by_key ON imported_records (commune_code, external_id);
