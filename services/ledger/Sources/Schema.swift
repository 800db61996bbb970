import Postgres

/// The ledger's own PostgreSQL schema, as numbered migrations applied at start. Safe when several
/// ledger instances start at once: the whole run holds a transaction-level advisory lock.
public enum LedgerSchema {
    static let lockKey = 0x5750_4C44  // "WPLD"
    /// The SQLSTATE `ledger.lock_unchanged` raises: a batch was decided on account states that did not
    /// commit, or that changed since; nothing of it was applied, and it is done again the plain way.
    public static let staleDecisionState = "WPSTL"

    public static let migrations: [(version: Int, sql: String)] = [
        (
            1,
            """
            CREATE TABLE ledger.accounts (
                id           text PRIMARY KEY,
                kind         smallint NOT NULL CHECK (kind IN (1, 2, 3)),   -- 1 wallet, 2 merchant, 3 funding
                currency     char(3) NOT NULL,
                name         text NOT NULL,
                owner_id     text,                                          -- the merchant id, for merchants
                debits       bigint NOT NULL DEFAULT 0 CHECK (debits >= 0),
                credits      bigint NOT NULL DEFAULT 0 CHECK (credits >= 0),
                pin_hash     bytea,                                         -- HMAC-SHA256(secret, id:pin); wallets
                pin_failures smallint NOT NULL DEFAULT 0,
                locked       boolean NOT NULL DEFAULT false,
                created_at   timestamptz NOT NULL DEFAULT now(),
                -- wallets and merchants never go below zero; funding accounts are the other side of top-ups
                CONSTRAINT balance_not_negative CHECK (kind = 3 OR credits >= debits)
            );
            CREATE UNIQUE INDEX accounts_owner ON ledger.accounts (owner_id) WHERE owner_id IS NOT NULL;

            CREATE TABLE ledger.transfers (
                id                   text PRIMARY KEY,                     -- caller-chosen: the idempotency key
                kind                 smallint NOT NULL CHECK (kind IN (1, 2, 3)),  -- payment, refund, funding
                -- No foreign keys on the hot path (they cost ~15 µs a row): the batch engine reads and locks
                -- both accounts before it inserts, and reconcile checks that every transfer has them.
                debit_account_id     text NOT NULL,
                credit_account_id    text NOT NULL,
                amount               bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000),
                currency             char(3) NOT NULL,
                payment_request_id   text,
                refund_of            text,
                refunded             bigint NOT NULL DEFAULT 0,
                debit_balance_after  bigint NOT NULL,
                credit_balance_after bigint NOT NULL,
                posted_at            timestamptz NOT NULL,
                CHECK (debit_account_id <> credit_account_id),
                CHECK (refunded >= 0 AND refunded <= amount),
                CHECK ((kind = 1) = (payment_request_id IS NOT NULL)),
                CHECK ((kind = 2) = (refund_of IS NOT NULL))
            );
            -- A payment request is paid by at most one transfer, whatever the code above does.
            CREATE UNIQUE INDEX transfers_one_payment_per_request ON ledger.transfers (payment_request_id) WHERE kind = 1;
            CREATE INDEX transfers_refund_of ON ledger.transfers (refund_of) WHERE refund_of IS NOT NULL;

            -- Transfers that failed a business rule: the same id stays failed (with its first answer).
            CREATE TABLE ledger.failed_transfers (
                id                 text PRIMARY KEY,
                kind               smallint NOT NULL,
                debit_account_id   text NOT NULL,
                credit_account_id  text NOT NULL,
                amount             bigint NOT NULL,
                currency           text NOT NULL,
                payment_request_id text,
                refund_of          text,
                status             smallint NOT NULL,
                code               text NOT NULL,
                message            text NOT NULL,
                failed_at          timestamptz NOT NULL DEFAULT now()
            );
            """
        ),
        (
            2,
            """
            -- The first statement of a batch decided while the batch before it was still committing
            -- (services/ledger, BatchEngine): locks the accounts it read, in id order like every batch, and
            -- refuses the whole transaction when one is no longer what the decisions started from.
            CREATE FUNCTION ledger.lock_unchanged(
                p_ids text[], p_debits bigint[], p_credits bigint[], p_failures smallint[], p_locked boolean[]
            ) RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM 1 FROM ledger.accounts WHERE id = ANY (p_ids) ORDER BY id FOR UPDATE;
                IF EXISTS (
                    SELECT 1
                    FROM unnest(p_ids, p_debits, p_credits, p_failures, p_locked) AS v(id, debits, credits, failures, locked)
                    LEFT JOIN ledger.accounts a ON a.id = v.id
                    WHERE a.id IS NULL
                       OR (a.debits, a.credits, a.pin_failures, a.locked)
                          IS DISTINCT FROM (v.debits, v.credits, v.failures, v.locked)
                ) THEN
                    RAISE EXCEPTION 'accounts changed after the batch was decided'
                        USING ERRCODE = 'WPSTL', HINT = 'the batch is done again with its reads locked';
                END IF;
            END
            $$;
            """
        ),
    ]

    /// Creates the schema and applies every migration not applied yet, in one transaction.
    public static func migrate(_ connection: PGConnection) throws {
        try connection.transaction { db in
            try db.query("SELECT pg_advisory_xact_lock($1)", [String(lockKey)])
            try db.execute(
                """
                CREATE SCHEMA IF NOT EXISTS ledger;
                CREATE TABLE IF NOT EXISTS ledger.schema_migrations (
                    version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            let applied = Set(try db.query("SELECT version FROM ledger.schema_migrations").rows.compactMap { $0[0] }.compactMap(Int.init))
            for migration in migrations where !applied.contains(migration.version) {
                try db.execute(migration.sql)
                try db.query("INSERT INTO ledger.schema_migrations (version) VALUES ($1)", [String(migration.version)])
            }
        }
    }
}
