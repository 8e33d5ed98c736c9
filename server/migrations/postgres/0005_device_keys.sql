-- Version 5: device public keys with their validity (issue 16). Mirrors the SQLite file.

-- Last version of the province's key list (one row): every change of a key (registered,
-- replaced, revoked) takes the next version, so a tablet asks for the entries after its own.
CREATE TABLE device_key_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO device_key_version (id, version) VALUES (1, 0);

-- A key stays listed after it is replaced or revoked: what it signed before stays verifiable.
CREATE TABLE device_keys (
    device      BYTEA NOT NULL REFERENCES devices (id),
    public_key  BYTEA NOT NULL,
    commune     TEXT, -- NULL: province scope
    valid_from  BIGINT NOT NULL,
    valid_until BIGINT,
    revoked_at  BIGINT,
    version     BIGINT NOT NULL,
    PRIMARY KEY (device, public_key)
);
CREATE INDEX device_keys_version ON device_keys (version);

-- Signed pushes: the signed message of each push (the device, its counter and the list of the
-- hashes of the changes it covered, 32 bytes each in request order) and the signature, kept so
-- that each stored change can be shown later to be covered by its device's signature.
CREATE TABLE push_signatures (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device      BYTEA NOT NULL,
    counter     BIGINT NOT NULL,
    hashes      BYTEA NOT NULL,
    signature   BYTEA NOT NULL,
    received_at BIGINT NOT NULL
);

-- The push whose signature covers a change (the first one that carried it).
CREATE TABLE change_signatures (
    hash BYTEA PRIMARY KEY,
    push BIGINT NOT NULL REFERENCES push_signatures (id)
);
