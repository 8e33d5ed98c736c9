-- Version 7 (SQLite; mirrors migrations/postgres/0007_read_model.sql): the read model, one row
-- per stored record, written in the transaction that stores its changes (see
-- server/src/storage/read_model.rs). Nullable columns are filled by records that carry them.
-- Documents stored before this version are projected by `communesync admin rebuild-read-model`
-- (which `communesync serve` runs at start when documents lack a row).
CREATE TABLE read_model (
    id                BLOB PRIMARY KEY REFERENCES documents (id),
    commune           TEXT NOT NULL REFERENCES communes (code),
    kind              INTEGER NOT NULL,
    status            TEXT,
    procedure_code    TEXT,
    procedure_version INTEGER,
    dossier_number    TEXT,
    received_at       INTEGER,
    due_on            TEXT,    -- YYYY-MM-DD
    returned_at       INTEGER,
    on_time           INTEGER, -- 0 or 1
    assignee          TEXT,
    has_conflicts     INTEGER NOT NULL,
    applicant_name    TEXT,
    name_folded       TEXT,
    id_number         TEXT,
    attachments       INTEGER,
    changes           INTEGER NOT NULL,
    first_received_at INTEGER NOT NULL,
    last_received_at  INTEGER NOT NULL,
    projection_error  TEXT
);
-- Covers the dashboard's scan (per commune and status: received, due, on time).
CREATE INDEX read_model_commune_status ON read_model (commune, status, received_at, due_on, on_time);
CREATE INDEX read_model_commune_received ON read_model (commune, received_at);
CREATE INDEX read_model_status_due ON read_model (status, due_on);
CREATE INDEX read_model_returned ON read_model (returned_at);
CREATE INDEX read_model_id_number ON read_model (id_number);
CREATE INDEX read_model_dossier_number ON read_model (dossier_number);
CREATE INDEX read_model_received ON read_model (received_at);

-- Console operators (username, argon2 password hash, role: viewer, operator or admin), their
-- sessions (token hash, CSRF token, expiry) and the audit log of every operator action.
CREATE TABLE console_operators (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE console_sessions (
    token_hash BLOB PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES console_operators (username),
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
CREATE TABLE console_audit (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    username TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
