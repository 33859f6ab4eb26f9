-- The table for examples/mqtt-json-postgres.yaml.
CREATE TABLE IF NOT EXISTS mqdb_example_readings (
    id          bigserial PRIMARY KEY,
    site        text        NOT NULL,
    device      text        NOT NULL,
    celsius     numeric(6, 2),
    measured_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    UNIQUE (device, measured_at)
);
