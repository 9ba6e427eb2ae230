"""PostgreSQL access for the order service: schema migrations and the connection pool."""
