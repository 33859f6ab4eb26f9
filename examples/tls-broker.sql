-- The table for examples/tls-broker.yaml (PostgreSQL).
CREATE TABLE IF NOT EXISTS mqdb_example_secure_readings (
    id          bigserial PRIMARY KEY,
    device      text             NOT NULL,
    metric      text             NOT NULL,
    value       double precision,
    measured_at timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    UNIQUE (device, metric, measured_at)
);
