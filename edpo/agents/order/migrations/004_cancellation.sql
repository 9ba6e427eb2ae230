-- Issue 8: customers cancel orders. When the request was accepted (POST /orders/{id}/cancel
-- answered 202); the process is told through the inbox row 'cancel:<order id>'.
ALTER TABLE orders ADD COLUMN cancel_requested_at timestamptz;
