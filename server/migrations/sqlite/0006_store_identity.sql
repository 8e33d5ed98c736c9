-- The store's epoch: a random value that changes when the database is restored from a backup
-- (`communesync admin restore`, `admin mark-restored`; a file made by `admin backup` carries a
-- fresh one). Sent to tablets on every sync answer (`Communesync-Store-Epoch`), so a tablet that
-- sees it change re-sends what the restored server may lack and re-reads the feed.
CREATE TABLE store_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    epoch     TEXT NOT NULL
);
INSERT INTO store_identity (singleton, epoch) VALUES (1, lower(hex(randomblob(16))));
