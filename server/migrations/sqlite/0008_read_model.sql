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
-- Covers the dashboard's count of records received this week and month.
CREATE INDEX read_model_received ON read_model (received_at, commune, status);

-- The dashboard's counts, maintained by triggers with every write of a read-model row (ingest and
-- rebuild alike), so that the dashboard adds up a few thousand rows instead of scanning every
-- record: records per commune, status, due date (open records only: the overdue count; the
-- open statuses are storage::OPEN_STATUSES) and on-time verdict (1, 0, or -1 when none).
-- Keys that reach 0 stay (bounded by the distinct keys).
CREATE TABLE read_model_counts (
    commune TEXT NOT NULL,
    status  TEXT NOT NULL,    -- '' when the record could not be read
    due_on  TEXT NOT NULL,    -- YYYY-MM-DD of an open record, else ''
    on_time INTEGER NOT NULL, -- 1, 0 or -1
    n       INTEGER NOT NULL,
    PRIMARY KEY (commune, status, due_on, on_time)
) WITHOUT ROWID;
CREATE TRIGGER read_model_counts_insert AFTER INSERT ON read_model BEGIN
    -- Not INSERT OR IGNORE: an outer statement's conflict policy would override it.
    INSERT INTO read_model_counts
    SELECT NEW.commune, COALESCE(NEW.status, ''),
        CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END,
        COALESCE(NEW.on_time, -1), 0
    WHERE NOT EXISTS (SELECT 1 FROM read_model_counts
        WHERE commune = NEW.commune AND status = COALESCE(NEW.status, '')
          AND due_on = CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END
          AND on_time = COALESCE(NEW.on_time, -1));
    UPDATE read_model_counts SET n = n + 1
    WHERE commune = NEW.commune AND status = COALESCE(NEW.status, '')
      AND due_on = CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END
      AND on_time = COALESCE(NEW.on_time, -1);
END;
CREATE TRIGGER read_model_counts_delete AFTER DELETE ON read_model BEGIN
    UPDATE read_model_counts SET n = n - 1
    WHERE commune = OLD.commune AND status = COALESCE(OLD.status, '')
      AND due_on = CASE WHEN OLD.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(OLD.due_on, '') ELSE '' END
      AND on_time = COALESCE(OLD.on_time, -1);
END;
CREATE TRIGGER read_model_counts_update AFTER UPDATE ON read_model
WHEN OLD.commune IS NOT NEW.commune OR OLD.status IS NOT NEW.status
  OR OLD.due_on IS NOT NEW.due_on OR OLD.on_time IS NOT NEW.on_time
BEGIN
    UPDATE read_model_counts SET n = n - 1
    WHERE commune = OLD.commune AND status = COALESCE(OLD.status, '')
      AND due_on = CASE WHEN OLD.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(OLD.due_on, '') ELSE '' END
      AND on_time = COALESCE(OLD.on_time, -1);
    -- Not INSERT OR IGNORE: an outer statement's conflict policy would override it.
    INSERT INTO read_model_counts
    SELECT NEW.commune, COALESCE(NEW.status, ''),
        CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END,
        COALESCE(NEW.on_time, -1), 0
    WHERE NOT EXISTS (SELECT 1 FROM read_model_counts
        WHERE commune = NEW.commune AND status = COALESCE(NEW.status, '')
          AND due_on = CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END
          AND on_time = COALESCE(NEW.on_time, -1));
    UPDATE read_model_counts SET n = n + 1
    WHERE commune = NEW.commune AND status = COALESCE(NEW.status, '')
      AND due_on = CASE WHEN NEW.status IN ('received', 'in_progress', 'supplement_requested') THEN COALESCE(NEW.due_on, '') ELSE '' END
      AND on_time = COALESCE(NEW.on_time, -1);
END;

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
