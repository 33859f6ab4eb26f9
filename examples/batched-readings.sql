-- The table for examples/batched-readings.yaml.
CREATE TABLE IF NOT EXISTS mqdb_example_batched_readings (
    id          bigserial PRIMARY KEY,
    device      text        NOT NULL,
    site        text,
    seq         integer     NOT NULL,
    measured_at timestamptz NOT NULL,
    value       numeric(8, 2),
    received_at timestamptz NOT NULL,
    UNIQUE (device, measured_at)
);
