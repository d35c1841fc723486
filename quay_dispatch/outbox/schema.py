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
    [
        # What the operator's page shows (docs/operations.md): the build a delivery came from, the Quay
        # notification as received, the duplicates Quay sent of it, the workflow run GitHub started; each
        # attempt's result and duration; the latest refused calls (capped, see Outbox.keep_refusals).
        "ALTER TABLE deliveries ADD COLUMN branch TEXT",
        "ALTER TABLE deliveries ADD COLUMN tags TEXT",
        "ALTER TABLE deliveries ADD COLUMN commit_sha TEXT",
        "ALTER TABLE deliveries ADD COLUMN notification TEXT",
        "ALTER TABLE deliveries ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE deliveries ADD COLUMN run_id BIGINT",
        "ALTER TABLE deliveries ADD COLUMN run_url TEXT",
        "ALTER TABLE attempts ADD COLUMN result TEXT",
        "ALTER TABLE attempts ADD COLUMN duration_ms INTEGER",
        "CREATE INDEX deliveries_target ON deliveries (target, id)",
        "CREATE INDEX deliveries_repository ON deliveries (quay_repository, id)",
        "CREATE INDEX deliveries_build ON deliveries (build_id)",
        "CREATE INDEX deliveries_commit ON deliveries (commit_sha)",
        "CREATE INDEX deliveries_created ON deliveries (created_at)",
        "CREATE INDEX attempts_at ON attempts (at)",
        """CREATE TABLE refusals (
            id {id},
            at {real} NOT NULL,
            caller TEXT NOT NULL,
            status INTEGER NOT NULL,
            event TEXT,
            reason TEXT NOT NULL,
            names TEXT
        )""",
    ],
    [
        # Quay's side (quay_side/recover.py): a delivery the relay recovered from Quay's build or tag list, after
        # Quay dropped the event.
        "ALTER TABLE deliveries ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0",
    ],
]
