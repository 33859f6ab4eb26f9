-- The outbox table for examples/outbox-after-publish.yaml (MariaDB).
--
-- The application INSERTs one row per event here, in the same transaction as the business
-- change it describes, and leaves sent_at NULL. mqdb publishes the unsent rows and sets
-- sent_at once RabbitMQ has confirmed each one.
CREATE TABLE IF NOT EXISTS mqdb_example_outbox (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    event_type   VARCHAR(100) NOT NULL,   -- the routing key, e.g. order.created
    aggregate_id VARCHAR(64)  NOT NULL,   -- which order, account … the event is about
    payload      TEXT         NOT NULL,   -- the event body (JSON text, published as a string)
    -- TIMESTAMP is stored in UTC whatever the writer's session time zone; mqdb reads it
    -- in a UTC session, so created_at is published correctly (…Z).
    created_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    sent_at      TIMESTAMP(3) NULL DEFAULT NULL,   -- NULL until the broker confirmed it
    -- The poll looks for sent_at IS NULL in id order: this index answers it without a
    -- scan of the rows already sent.
    KEY mqdb_example_outbox_unsent (sent_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
