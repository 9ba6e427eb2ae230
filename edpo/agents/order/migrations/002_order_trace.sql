-- The trace id every message caused by this order carries (the OrderPlaced event's id).
ALTER TABLE orders ADD COLUMN trace_id text;
