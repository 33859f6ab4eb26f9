-- The buffer table for examples/sqlite-edge-gateway.yaml (SQLite).
--   sqlite3 mqdb-edge.db < examples/sqlite-edge-gateway.sql
CREATE TABLE IF NOT EXISTS mqdb_example_edge_readings (
    -- AUTOINCREMENT: SQLite never hands out an id again, even the highest one after it
    -- was deleted. The forward route tracks `id > ?`, so a reused id would be skipped.
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device       TEXT      NOT NULL,
    metric       TEXT      NOT NULL,
    value        REAL,
    measured_at  TIMESTAMP NOT NULL,   -- UTC
    received_at  TIMESTAMP NOT NULL,   -- UTC, when the gateway got it
    forwarded_at TIMESTAMP,            -- UTC, set once the upstream broker confirmed it
    UNIQUE (device, metric, measured_at)
);
