import Postgres

/// The router's own PostgreSQL schema (`router`), as numbered migrations applied at start. Safe when
/// several router instances start at once: the whole run holds a transaction-level advisory lock.
/// Times are unix milliseconds (`bigint`), the unit of the bus, so no conversion happens on the hot path.
public enum RouterSchema {
    static let lockKey = 0x5750_5254  // "WPRT"

    public static let migrations: [(version: Int, sql: String)] = [
        (
            1,
            """
            CREATE TABLE router.merchants (
                id         text PRIMARY KEY,
                name       text NOT NULL,
                currency   char(3) NOT NULL,
                account_id text NOT NULL UNIQUE,          -- its ledger account
                created_at bigint NOT NULL
            );

            CREATE TABLE router.terminals (
                id          text PRIMARY KEY,
                merchant_id text NOT NULL REFERENCES router.merchants (id),
                name        text NOT NULL,
                key_hash    text NOT NULL UNIQUE,         -- lowercase hex SHA-256 of the bearer key
                created_at  bigint NOT NULL
            );

            CREATE TABLE router.wallets (
                account_id text PRIMARY KEY,              -- its ledger account
                name       text NOT NULL,                 -- only a masked alias of it is ever shown
                currency   char(3) NOT NULL,
                created_at bigint NOT NULL
            );

            CREATE TABLE router.enrollments (
                code_hash  text PRIMARY KEY,              -- hex SHA-256 of the normalised code
                account_id text NOT NULL REFERENCES router.wallets (account_id),
                created_at bigint NOT NULL,
                used_at    bigint,
                device_id  text
            );

            CREATE TABLE router.devices (
                id         text PRIMARY KEY,
                account_id text NOT NULL REFERENCES router.wallets (account_id),
                public_key bytea NOT NULL CHECK (length(public_key) = 32),
                name       text NOT NULL,
                created_at bigint NOT NULL
            );

            CREATE TABLE router.requests (
                id               text PRIMARY KEY,
                merchant_id      text NOT NULL,
                terminal_id      text NOT NULL,
                amount           bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000),
                currency         char(3) NOT NULL,
                reference        text NOT NULL,
                description      text,
                status           smallint NOT NULL CHECK (status BETWEEN 1 AND 5),  -- PaymentRequestStatus
                created_at       bigint NOT NULL,
                expires_at       bigint NOT NULL,
                payload          text NOT NULL,
                idem_key         text NOT NULL,
                body_hash        text NOT NULL,
                payment_id       text UNIQUE,              -- set when succeeded: the ledger transfer id
                posted_at        bigint,
                payer_account_id text,
                device_id        text,                     -- the payer's device, or the declined one
                payer_alias      text,
                decline_code     text,
                cancel_key       text,
                final_at         bigint,
                UNIQUE (terminal_id, idem_key),
                CHECK ((status = 2) = (payment_id IS NOT NULL))
            );
            -- What the sweeper scans: pending requests by expiry.
            CREATE INDEX requests_pending_expiry ON router.requests (expires_at) WHERE status = 1;
            -- account.summary: a wallet's recent payments.
            CREATE INDEX requests_payer ON router.requests (payer_account_id, posted_at DESC) WHERE status = 2;

            -- Committed before the ledger is called, so recovery knows who tried to pay (and with which id).
            CREATE TABLE router.attempts (
                transfer_id text PRIMARY KEY,
                request_id  text NOT NULL,
                device_id   text NOT NULL,
                account_id  text NOT NULL,
                at          bigint NOT NULL
            );
            CREATE INDEX attempts_request ON router.attempts (request_id);

            -- Each instruction's stored answer, for the same (device, key) again.
            CREATE TABLE router.instructions (
                device_id  text NOT NULL,
                idem_key   text NOT NULL,
                body_hash  text NOT NULL,
                request_id text NOT NULL,
                status     smallint NOT NULL,              -- the bus reply status (200 or 422)
                result     bytea NOT NULL,                 -- the encoded InstructionResult
                at         bigint NOT NULL,
                PRIMARY KEY (device_id, idem_key)
            );

            CREATE TABLE router.refunds (
                id          text PRIMARY KEY,              -- the ledger transfer id (derived from merchant + key)
                payment_id  text NOT NULL,
                request_id  text NOT NULL,
                merchant_id text NOT NULL,
                idem_key    text NOT NULL,
                body_hash   text NOT NULL,
                amount      bigint NOT NULL CHECK (amount > 0),
                at          bigint NOT NULL,
                UNIQUE (merchant_id, idem_key)
            );
            CREATE INDEX refunds_payment ON router.refunds (payment_id);

            -- Outcomes to deliver to the notifier, written in the transaction of the change they tell.
            CREATE TABLE router.outbox (
                seq          bigserial PRIMARY KEY,
                request_id   text NOT NULL,
                body         bytea NOT NULL,               -- OutcomePublished, its outbox_seq filled in on delivery
                created_at   bigint NOT NULL,
                delivered_at bigint
            );
            CREATE INDEX outbox_undelivered ON router.outbox (seq) WHERE delivered_at IS NULL;

            CREATE TABLE router.trace (
                id         bigserial PRIMARY KEY,
                request_id text NOT NULL,
                at         bigint NOT NULL,
                stage      text NOT NULL,
                event      text NOT NULL,
                detail     text NOT NULL
            );
            CREATE INDEX trace_request ON router.trace (request_id, id);
            """
        ),
        (
            2,
            """
            -- A declined attempt leaves the request pending; this many were declined so far
            -- (WIPAY_MAX_DECLINED_ATTEMPTS of them make it final declined, decline_code attempts_exhausted).
            ALTER TABLE router.requests ADD COLUMN declined_attempts integer NOT NULL DEFAULT 0
                CHECK (declined_attempts >= 0);

            -- Device signatures of payment instructions seen in the replay window, shared by every
            -- phone-gateway instance and kept across restarts: the same signature again is a resend
            -- (answered with the first result) only with the same device, Idempotency-Key and body.
            CREATE TABLE router.signatures (
                digest    text PRIMARY KEY,               -- lowercase hex SHA-256 of the raw signature
                device_id text NOT NULL,
                idem_key  text NOT NULL,
                body_hash text NOT NULL,
                at        bigint NOT NULL
            );
            CREATE INDEX signatures_at ON router.signatures (at);
            """
        ),
        (
            3,
            """
            -- The trace reads a request's delivered outbox rows (its outbox.delivered steps are no longer
            -- trace rows).
            CREATE INDEX outbox_request ON router.outbox (request_id);
            """
        ),
        (
            4,
            """
            -- request.list: a terminal's requests of the day, newest first (the counter page).
            CREATE INDEX requests_terminal_created ON router.requests (terminal_id, created_at DESC);
            """
        ),
    ]

    /// Creates the schema and applies every migration not applied yet, in one transaction.
    public static func migrate(_ connection: PGConnection) throws {
        try connection.transaction { db in
            try db.query("SELECT pg_advisory_xact_lock($1)", [String(lockKey)])
            try db.execute(
                """
                CREATE SCHEMA IF NOT EXISTS router;
                CREATE TABLE IF NOT EXISTS router.schema_migrations (
                    version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            let applied = Set(
                try db.query("SELECT version FROM router.schema_migrations").rows.compactMap { $0[0] }.compactMap(Int.init))
            for migration in migrations where !applied.contains(migration.version) {
                try db.execute(migration.sql)
                try db.query("INSERT INTO router.schema_migrations (version) VALUES ($1)", [String(migration.version)])
            }
        }
    }
}
