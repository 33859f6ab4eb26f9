-- The table for examples/postgres-on-change.yaml, and the trigger that notifies the
-- route's channel after every INSERT statement (once per statement, however many rows).
CREATE TABLE IF NOT EXISTS mqdb_example_new_orders (
    id          bigserial PRIMARY KEY,
    customer    text          NOT NULL,
    total       numeric(12,2) NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    sent_at     timestamptz
);

-- The channel is the trigger's argument, so one function serves every table.
CREATE OR REPLACE FUNCTION mqdb_example_notify_channel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS mqdb_example_new_orders_inserted ON mqdb_example_new_orders;

CREATE TRIGGER mqdb_example_new_orders_inserted
    AFTER INSERT ON mqdb_example_new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION mqdb_example_notify_channel('mqdb_example_new_orders_changed');
