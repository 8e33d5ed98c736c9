-- Version 5: device public keys with their validity (issue 16). Mirrors the PostgreSQL file.

-- Last version of the province's key list (one row): every change of a key (registered,
-- replaced, revoked) takes the next version, so a tablet asks for the entries after its own.
CREATE TABLE device_key_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO device_key_version (id, version) VALUES (1, 0);

-- A key stays listed after it is replaced or revoked: what it signed before stays verifiable.
CREATE TABLE device_keys (
    device      BLOB NOT NULL REFERENCES devices (id),
    public_key  BLOB NOT NULL,
    commune     TEXT, -- NULL: province scope
    valid_from  INTEGER NOT NULL,
    valid_until INTEGER,
    revoked_at  INTEGER,
    version     INTEGER NOT NULL,
    PRIMARY KEY (device, public_key)
);
CREATE INDEX device_keys_version ON device_keys (version);

-- Signed pushes: the signed message of each push (the device, its counter and the list of the
-- hashes of the changes it covered, 32 bytes each in request order) and the signature, kept so
-- that each stored change can be shown later to be covered by its device's signature.
CREATE TABLE push_signatures (
    id          INTEGER PRIMARY KEY,
    device      BLOB NOT NULL,
    counter     INTEGER NOT NULL,
    hashes      BLOB NOT NULL,
    signature   BLOB NOT NULL,
    received_at INTEGER NOT NULL
);

-- The push whose signature covers a change (the first one that carried it).
CREATE TABLE change_signatures (
    hash BLOB PRIMARY KEY,
    push INTEGER NOT NULL REFERENCES push_signatures (id)
);
