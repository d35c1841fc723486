"""The outbox's schema: versions applied in order at start-up, the same for SQLite and PostgreSQL."""

# Schema versions, applied in order at start-up; {id} and {real} are per database.
MIGRATIONS = [
    [
        """CREATE TABLE deliveries (
            id {id},
            created_at {real} NOT NULL,
            queued_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            event TEXT NOT NULL,
            quay_repository TEXT NOT NULL,
            build_id TEXT,
            host TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            event_type TEXT NOT NULL,
            path TEXT NOT NULL,
            body TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            dedup_until {real},
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL,
            lease_until {real},
            last_status INTEGER,
            last_error TEXT,
            last_request_id TEXT,
            delivered_at {real}
        )""",
        "CREATE INDEX deliveries_dedup ON deliveries (dedup_key)",
        "CREATE INDEX deliveries_due ON deliveries (host, status, next_attempt_at)",
        "CREATE INDEX deliveries_status ON deliveries (status, id)",
        """CREATE TABLE attempts (
            delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
            host TEXT NOT NULL,
            at {real} NOT NULL,
            http_status INTEGER,
            request_id TEXT,
            error TEXT
        )""",
        "CREATE INDEX attempts_delivery ON attempts (delivery_id)",
        "CREATE INDEX attempts_host_at ON attempts (host, at)",
        "CREATE TABLE hosts (host TEXT PRIMARY KEY, paused_until {real} NOT NULL)",
    ],
    [
        # claim() looks for a lease in flight on every look: without this index, that
        # read every pending delivery of the host (8 ms for 10 000, with the write lock held).
        "CREATE INDEX deliveries_leased ON deliveries (host, lease_until) WHERE lease_until IS NOT NULL",
    ],
    [
        # What the workers and replicas share besides deliveries (outbox/shared.py): ACME's state.
        "CREATE TABLE shared_values (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at {real} NOT NULL)",
        "CREATE TABLE shared_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {real} NOT NULL)",
    ],
]
