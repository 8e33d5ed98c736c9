-- The store's epoch: a random value that changes when the database is restored from a backup
-- (`communesync admin mark-restored` after pg_restore or a point-in-time recovery). Sent to
-- tablets on every sync answer (`Communesync-Store-Epoch`), so a tablet that sees it change
-- re-sends what the restored server may lack and re-reads the feed. A promoted synchronous
-- standby keeps it: nothing acknowledged was lost there.
CREATE TABLE store_identity (
    singleton SMALLINT PRIMARY KEY CHECK (singleton = 1),
    epoch     TEXT NOT NULL
);
INSERT INTO store_identity (singleton, epoch)
VALUES (1, md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text));
