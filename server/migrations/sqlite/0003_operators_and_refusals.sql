-- Version 3 (SQLite; mirrors migrations/postgres/0003_operators_and_refusals.sql).

-- Revocation with wipe: a device revoked with `wiped` set is told to destroy its store.
-- `cursor_issued`: the highest feed cursor the server handed this device (see
-- `ServerStorage::set_cursor_issued`), for stores restored from an older backup.
ALTER TABLE devices ADD COLUMN wiped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN cursor_issued INTEGER NOT NULL DEFAULT 0;

-- A code with `device` set is a re-enrollment code: it enrolls only that existing device,
-- replacing its token. NULL: an enrollment code for a new device.
ALTER TABLE enrollment_codes ADD COLUMN device BLOB REFERENCES devices (id);

-- Operator tokens get an id (to list and revoke them), their times and a revocation. SQLite
-- cannot add a primary key to a table: rebuild it. Tokens created before version 3 have no
-- `created_at`.
CREATE TABLE admin_tokens_v3 (
    id           INTEGER PRIMARY KEY,
    token_hash   BLOB NOT NULL UNIQUE,
    label        TEXT NOT NULL,
    created_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
INSERT INTO admin_tokens_v3 (token_hash, label)
    SELECT token_hash, label FROM admin_tokens ORDER BY rowid;
DROP TABLE admin_tokens;
ALTER TABLE admin_tokens_v3 RENAME TO admin_tokens;

-- `enrollment_failures.failures` now counts attempts reserved in the window (a successful
-- enrollment gives its reservation back), see `ServerStorage::reserve_enrollment_attempt`.

-- Documents the server refused from a device, one row per (device, document), for operators.
CREATE TABLE refusals (
    device   BLOB NOT NULL REFERENCES devices (id),
    doc      BLOB NOT NULL,
    code     TEXT NOT NULL,
    message  TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    times    INTEGER NOT NULL,
    PRIMARY KEY (device, doc)
);
CREATE INDEX refusals_device_last_at ON refusals (device, last_at);
CREATE INDEX refusals_last_at ON refusals (last_at);
