-- Version 6: this device's signing key, the province's device public keys and the receipts
-- issued here (issue 16).

-- The device's Ed25519 key pair, made on the device; the secret never leaves this (encrypted)
-- file. One row.
CREATE TABLE device_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    secret      BLOB NOT NULL,
    public_key  BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The province's list of device public keys, as received with the reference data (a delta by
-- version; the version this device holds is in `meta` under `device_keys_version`).
CREATE TABLE province_keys (
    device      BLOB NOT NULL,
    public_key  BLOB NOT NULL,
    commune     TEXT NOT NULL,
    valid_from  INTEGER NOT NULL,
    valid_until INTEGER,
    revoked_at  INTEGER,
    version     INTEGER NOT NULL,
    PRIMARY KEY (device, public_key)
) WITHOUT ROWID;

-- Receipts issued on this device: a reprint gives the citizen the same signed payload.
CREATE TABLE receipts (
    record_id       BLOB PRIMARY KEY,
    dossier_number  TEXT NOT NULL,
    payload         TEXT NOT NULL,
    issued_at       INTEGER NOT NULL
);
CREATE INDEX receipts_by_number ON receipts (dossier_number);

-- Changes this device signed in a push (what history shows as "signed by this device").
CREATE TABLE signed_changes (
    hash BLOB PRIMARY KEY
) WITHOUT ROWID;
