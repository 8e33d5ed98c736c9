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
