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
