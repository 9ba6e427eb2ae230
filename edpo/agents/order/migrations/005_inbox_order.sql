-- Found by kill -9 postgres: an order's events must reach its process in the order they came.
-- A row whose correlation failed for a technical reason (engine error, engine away) is held:
-- the later events of its order wait until it went through. Otherwise a StockReserved could
-- overtake the order's StockPartiallyReserved, the process skipped "Request replenishment",
-- and the units it took from the waiting queue were never made again for the order behind.
ALTER TABLE process_inbox ADD COLUMN held boolean NOT NULL DEFAULT false;
CREATE INDEX process_inbox_held_idx ON process_inbox (order_id, received_at) WHERE state = 'pending' AND held;
