-- The table for examples/amqp-csv-mariadb.yaml.
CREATE TABLE IF NOT EXISTS mqdb_example_movements (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    sku         VARCHAR(32)  NOT NULL,
    qty         INT          NOT NULL,
    moved_at    DATETIME(3)  NOT NULL,
    note        VARCHAR(200),
    warehouse   VARCHAR(32),
    routing_key VARCHAR(100),
    received_at DATETIME(3)  NOT NULL,
    UNIQUE KEY movement (sku, moved_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
