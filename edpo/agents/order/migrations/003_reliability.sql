-- Issue 7: crash safety and retention.
-- The event itself, so an inbox row the bridge gives up on is dead-lettered with its payload
-- (and a replayed dead letter brings the row back).
ALTER TABLE process_inbox ADD COLUMN payload text NOT NULL DEFAULT '';
-- state: pending | correlated | discarded | dead (dead-lettered)
CREATE INDEX process_inbox_done_idx ON process_inbox (done_at) WHERE state <> 'pending';
CREATE INDEX process_inbox_order_idx ON process_inbox (order_id);
-- Retention prunes acknowledged outbox rows by age.
CREATE INDEX outbox_acked_idx ON outbox (acked_at) WHERE acked_at IS NOT NULL;
-- Reconciliation looks at orders that are not final yet.
CREATE INDEX orders_open_idx ON orders (updated_at) WHERE status NOT IN ('DELIVERED', 'CANCELLED', 'REJECTED');
