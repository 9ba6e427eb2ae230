-- Orders, their lines and status history; owned by the order service.
CREATE TABLE orders (
    order_id         text PRIMARY KEY,
    customer_id      text NOT NULL,
    delivery_address text NOT NULL,
    status           text NOT NULL,
    status_rank      int  NOT NULL,
    idempotency_key  text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_status_idx ON orders (status, created_at);

CREATE TABLE order_lines (
    order_id text NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no  int  NOT NULL,
    sku      text NOT NULL,
    quantity int  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_history (
    id        bigserial PRIMARY KEY,
    order_id  text NOT NULL REFERENCES orders ON DELETE CASCADE,
    status    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    event_id  text,
    detail    text
);
CREATE INDEX order_history_order_idx ON order_history (order_id, id);
-- An event applied twice must not write history twice.
CREATE UNIQUE INDEX order_history_event_idx ON order_history (order_id, event_id) WHERE event_id IS NOT NULL;

-- Transactional outbox: messages written in the same transaction as the state change,
-- relayed to Kafka afterwards; commands stay here until acknowledged.
CREATE TABLE outbox (
    message_id   text PRIMARY KEY,
    topic        text NOT NULL,
    key          text NOT NULL,
    payload      bytea NOT NULL,
    is_command   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    attempts     int NOT NULL DEFAULT 0,
    next_send_at timestamptz NOT NULL DEFAULT now(),
    acked_at     timestamptz,
    ack          text
);
CREATE INDEX outbox_due_idx ON outbox (next_send_at) WHERE acked_at IS NULL;

-- Events waiting to be correlated with a process instance (the Camunda bridge's inbox).
CREATE TABLE process_inbox (
    event_id      text PRIMARY KEY,
    order_id      text NOT NULL,
    message_name  text NOT NULL,
    variables     jsonb NOT NULL DEFAULT '{}',
    correlation   jsonb NOT NULL DEFAULT '{}',
    received_at   timestamptz NOT NULL DEFAULT now(),
    attempts      int NOT NULL DEFAULT 0,
    next_try_at   timestamptz NOT NULL DEFAULT now(),
    state         text NOT NULL DEFAULT 'pending',  -- pending | correlated | discarded
    done_at       timestamptz,
    last_error    text
);
CREATE INDEX process_inbox_pending_idx ON process_inbox (next_try_at) WHERE state = 'pending';
