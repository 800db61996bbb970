import Postgres

/// The notifier's own PostgreSQL schema, as numbered migrations applied at start. Safe when several
/// notifier instances start at once: the whole run holds a transaction-level advisory lock.
public enum NotifierSchema {
    static let lockKey = 0x5750_4E54  // "WPNT"

    public static let migrations: [(version: Int, sql: String)] = [
        (
            1,
            """
            -- One row per Server-Sent Event of one client stream; `seq` increases by one per recipient.
            CREATE TABLE notifier.notices (
                recipient  text NOT NULL,                  -- pos:<terminal id> or dev:<device id>
                seq        bigint NOT NULL CHECK (seq > 0),
                event_type text NOT NULL,                  -- the SSE `event:`
                data       text NOT NULL,                  -- the SSE `data:` JSON
                at         bigint NOT NULL,                -- unix milliseconds of the outcome
                outbox_seq bigint NOT NULL,                -- which outcome it came from
                PRIMARY KEY (recipient, seq)
            );

            -- The latest seq per recipient: the row lock serialises allocation for one recipient only.
            CREATE TABLE notifier.heads (
                recipient text PRIMARY KEY,
                seq       bigint NOT NULL
            );

            -- Outbox rows already turned into notices: a repeat delivery does nothing.
            CREATE TABLE notifier.consumed (
                outbox_seq  bigint PRIMARY KEY,
                consumed_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
    ]

    /// Creates the schema and applies every migration not applied yet, in one transaction.
    public static func migrate(_ connection: PGConnection) throws {
        try connection.transaction { db in
            try db.query("SELECT pg_advisory_xact_lock($1)", [String(lockKey)])
            try db.execute(
                """
                CREATE SCHEMA IF NOT EXISTS notifier;
                CREATE TABLE IF NOT EXISTS notifier.schema_migrations (
                    version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            let applied = Set(
                try db.query("SELECT version FROM notifier.schema_migrations").rows.compactMap { $0[0] }.compactMap(Int.init))
            for migration in migrations where !applied.contains(migration.version) {
                try db.execute(migration.sql)
                try db.query("INSERT INTO notifier.schema_migrations (version) VALUES ($1)", [String(migration.version)])
            }
        }
    }
}
