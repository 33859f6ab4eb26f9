-- The table for examples/postgres-no-skip.yaml. The id comes from the table's own
-- sequence (bigserial: CACHE 1, the default), taken by the INSERT inside the writing
-- transaction: the conditions under which visibility: snapshot never skips a row.
CREATE TABLE IF NOT EXISTS mqdb_example_orders (
    id        bigserial   PRIMARY KEY,
    customer  text        NOT NULL,
    total     numeric(12, 2) NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now()
);
