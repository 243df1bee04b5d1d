"""The Postgres layer: how rows get in (SQL, transactions, retries, ledger)."""
