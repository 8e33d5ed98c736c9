-- communesync device store, schema version 1.
-- Documents: one Automerge snapshot per record plus incremental change chunks since it.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE documents (
    rowid       INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE,
    kind        INTEGER NOT NULL,
    snapshot    BLOB NOT NULL,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    -- Digest of the folded text in search_index, to skip re-indexing when it did not change.
    search_digest INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE document_chunks (
    doc   INTEGER NOT NULL REFERENCES documents(rowid) ON DELETE CASCADE,
    seq   INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (doc, seq)
) WITHOUT ROWID;

-- Projections: what queries read, rewritten in the same transaction as every change.
CREATE TABLE applications (
    doc            INTEGER PRIMARY KEY REFERENCES documents(rowid) ON DELETE CASCADE,
    commune_code   TEXT NOT NULL,
    procedure_code TEXT NOT NULL,
    status         TEXT NOT NULL,
    village        TEXT NOT NULL,
    assignee       TEXT,
    applicant_name TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    due_at         TEXT NOT NULL,
    has_conflicts  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX applications_by_status    ON applications(status, received_at);
CREATE INDEX applications_by_procedure ON applications(procedure_code, received_at);
CREATE INDEX applications_by_village   ON applications(village, received_at);
CREATE INDEX applications_by_assignee  ON applications(assignee, received_at);
CREATE INDEX applications_by_due       ON applications(due_at);
CREATE INDEX applications_by_received  ON applications(received_at);
-- Overdue and due-soon lists read only open applications.
CREATE INDEX applications_open_by_due  ON applications(due_at)
    WHERE status IN ('received', 'in_progress', 'supplement_requested');

CREATE TABLE citizen_requests (
    doc           INTEGER PRIMARY KEY REFERENCES documents(rowid) ON DELETE CASCADE,
    commune_code  TEXT NOT NULL,
    category      TEXT NOT NULL,
    status        TEXT NOT NULL,
    village       TEXT NOT NULL,
    assignee      TEXT,
    reporter_name TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    has_conflicts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX citizen_requests_by_status  ON citizen_requests(status, received_at);
CREATE INDEX citizen_requests_by_village ON citizen_requests(village, received_at);

-- Folded (no diacritics, đ -> d, lowercase) names and notes; rowid = documents.rowid.
CREATE VIRTUAL TABLE search_index USING fts5(
    body, content = '', contentless_delete = 1, tokenize = 'unicode61'
);

-- Documents with local edits the server has not acknowledged yet.
CREATE TABLE outbox (
    doc       INTEGER PRIMARY KEY REFERENCES documents(rowid) ON DELETE CASCADE,
    local_seq INTEGER NOT NULL
);

-- Reference data the province distributes.
CREATE TABLE procedures (
    code               TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    processing_days    INTEGER NOT NULL,
    withdrawal_allowed INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE holidays (
    day TEXT PRIMARY KEY
) WITHOUT ROWID;
