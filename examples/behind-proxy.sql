-- The table for examples/behind-proxy.yaml.
CREATE TABLE IF NOT EXISTS mqdb_example_proxy_readings (
    id          bigserial PRIMARY KEY,
    device      text             NOT NULL,
    value       double precision,
    received_at timestamptz      NOT NULL
);
