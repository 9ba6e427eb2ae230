-- GET /orders pages newest first by (created_at, order_id): keyset pagination without a sort.
CREATE INDEX IF NOT EXISTS orders_created_idx ON orders (created_at DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_status_page_idx ON orders (status, created_at DESC, order_id DESC);
DROP INDEX IF EXISTS orders_status_idx;
