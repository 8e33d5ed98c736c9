-- Version 7 (PostgreSQL; mirrors migrations/sqlite/0007_read_model.sql): the read model, one row
-- per stored record, written in the transaction that stores its changes (see
-- server/src/storage/read_model.rs). Nullable columns are filled by records that carry them.
-- Documents stored before this version are projected by `communesync admin rebuild-read-model`
-- (which `communesync serve` runs at start when documents lack a row).
CREATE TABLE read_model (
    id                BYTEA PRIMARY KEY REFERENCES documents (id),
    commune           TEXT NOT NULL REFERENCES communes (code),
    kind              SMALLINT NOT NULL,
    status            TEXT,
    procedure_code    TEXT,
    procedure_version BIGINT,
    dossier_number    TEXT,
    received_at       BIGINT,
    due_on            TEXT,    -- YYYY-MM-DD
    returned_at       BIGINT,
    on_time           BOOLEAN,
    assignee          TEXT,
    has_conflicts     BOOLEAN NOT NULL,
    applicant_name    TEXT,
    name_folded       TEXT,
    id_number         TEXT,
    attachments       BIGINT,
    changes           BIGINT NOT NULL,
    first_received_at BIGINT NOT NULL,
    last_received_at  BIGINT NOT NULL,
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
    created_at    BIGINT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE console_sessions (
    token_hash BYTEA PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES console_operators (username),
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
CREATE TABLE console_audit (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    username TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
