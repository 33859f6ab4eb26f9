-- The tables deploy/mqdb.yaml writes and reads, in the mqdb database. deploy/compose.yaml
-- runs this when the PostgreSQL volume is first created; elsewhere run it with psql.
-- mqdb creates its own state tables at start.
CREATE TABLE IF NOT EXISTS readings (
    id          bigserial PRIMARY KEY,
    site        text        NOT NULL,
    device      text        NOT NULL,
    celsius     numeric(6, 2),
    measured_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    UNIQUE (device, measured_at)
);

-- Rows inserted here are published to alarms/<device>; sent_at is set once the broker
-- has acknowledged them.
CREATE TABLE IF NOT EXISTS alarms (
    id        bigserial PRIMARY KEY,
    device    text        NOT NULL,
    level     text        NOT NULL,
    text      text        NOT NULL,
    raised_at timestamptz NOT NULL DEFAULT now(),
    sent_at   timestamptz
);
CREATE INDEX IF NOT EXISTS alarms_unsent ON alarms (sent_at, id);
