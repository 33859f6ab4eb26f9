-- The table for examples/postgres-mqtt-alarms.yaml.
CREATE TABLE IF NOT EXISTS mqdb_example_alarms (
    id         bigserial PRIMARY KEY,
    device     text        NOT NULL,
    level      int         NOT NULL,
    text       text,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
