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
-- Covers the dashboard's count of records received this week and month.
CREATE INDEX read_model_received ON read_model (received_at, commune, status);

-- The dashboard's counts, maintained by a trigger with every write of a read-model row (ingest and
-- rebuild alike), so that the dashboard adds up a few thousand rows instead of scanning every
-- record: records per commune, status, due date (open records only: the overdue count; the
-- open statuses are storage::OPEN_STATUSES) and on-time verdict (1, 0, or -1 when none).
-- Keys that reach 0 stay (bounded by the distinct keys). Writes of one commune's rows are
-- serialized by ingest's commune lock, so its count rows are too.
CREATE TABLE read_model_counts (
    commune TEXT NOT NULL,
    status  TEXT NOT NULL,     -- '' when the record could not be read
    due_on  TEXT NOT NULL,     -- YYYY-MM-DD of an open record, else ''
    on_time SMALLINT NOT NULL, -- 1, 0 or -1
    n       BIGINT NOT NULL,
    PRIMARY KEY (commune, status, due_on, on_time)
);
CREATE FUNCTION read_model_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE read_model_counts SET n = n - 1
        WHERE commune = OLD.commune AND status = COALESCE(OLD.status, '')
          AND due_on = CASE WHEN OLD.status IN ('received', 'in_progress', 'supplement_requested')
                            THEN COALESCE(OLD.due_on, '') ELSE '' END
          AND on_time = CASE WHEN OLD.on_time IS NULL THEN -1 WHEN OLD.on_time THEN 1 ELSE 0 END;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO read_model_counts VALUES (
            NEW.commune, COALESCE(NEW.status, ''),
            CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END,
            CASE WHEN NEW.on_time IS NULL THEN -1 WHEN NEW.on_time THEN 1 ELSE 0 END, 1)
        ON CONFLICT (commune, status, due_on, on_time)
        DO UPDATE SET n = read_model_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER read_model_counts_insert_delete AFTER INSERT OR DELETE ON read_model
    FOR EACH ROW EXECUTE FUNCTION read_model_counts_apply();
CREATE TRIGGER read_model_counts_update AFTER UPDATE ON read_model
    FOR EACH ROW WHEN (OLD.commune IS DISTINCT FROM NEW.commune
        OR OLD.status IS DISTINCT FROM NEW.status OR OLD.due_on IS DISTINCT FROM NEW.due_on
        OR OLD.on_time IS DISTINCT FROM NEW.on_time)
    EXECUTE FUNCTION read_model_counts_apply();

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
