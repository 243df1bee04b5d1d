"""What each operation needs of the role, asked of the server first; the GRANTs that give it.

A 42501 half-way through a load names the object but neither why it is needed nor what
to grant. So each operation first asks the server (``has_*_privilege``, ownership) for
exactly what it is about to use, and refuses with every missing privilege named, each
with the statement that grants it (``PermissionDeniedError``). ``grant_statements``
prints the same needs for a role up front (``etl-assets-dead-letters grants ROLE``).

What an operation needs (the README's table is this, in words):

* ledger migration (first use, or a new layout): USAGE + CREATE on the ledger schema
  (or CREATE on the database, to create a missing schema);
* load: USAGE + CREATE on the target's schema (its staging tables live there; or
  CREATE on the database for a missing schema), and on an existing target table:
  ownership (replace into a partitioned table: partitions are attached and detached),
  SELECT + INSERT + DELETE (replace into a plain table) or SELECT + INSERT + UPDATE
  (upsert); the ledger tables' SELECT, INSERT, UPDATE, DELETE;
* checks: USAGE on both schemas, SELECT on the target and the ledger tables;
* replay: USAGE on both schemas, SELECT + INSERT (+ UPDATE for upsert) on the target,
  the ledger tables' SELECT, INSERT, UPDATE, DELETE;
* discard, cleanup: USAGE on the ledger schema, its tables' SELECT, INSERT, UPDATE,
  DELETE (cleanup drops dead loads' staging tables: the loading role owns them).

A role that created the ledger and the tables owns them and has all of the table
privileges; the DBA layout needs only the schemas' USAGE + CREATE.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from etl_assets.errors import PermissionDeniedError
from etl_assets.postgres.sql import qualified, quote_ident
from etl_assets.postgres.target import TableTarget, WriteMode

__all__ = [
    "LEDGER_TABLES",
    "LEDGER_WRITE",
    "Missing",
    "Needs",
    "TargetUse",
    "create_schema_if_missing",
    "explained",
    "grant_statements",
    "ledger_needs",
    "missing_on_schema",
    "missing_on_table",
    "operation_needs",
    "require",
    "target_needs",
    "table_use",
]

Needs = Callable[[asyncpg.Connection], Awaitable[list["Missing"]]]

# Every table of the ledger layout (ledger_layout.LedgerLayout; a test keeps the two equal:
# the layout imports this module, so it cannot be imported from here).
LEDGER_TABLES = (
    "load_ledger",
    "dead_letters",
    "partition_loads",
    "deleted_letters",
    "ledger_version",
    "load_leases",
)
LEDGER_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True, slots=True)
class Missing:
    """One privilege the role lacks: what it is, and the statement that grants it."""

    what: str
    grant: str


@dataclass(frozen=True, slots=True)
class TargetUse:
    """What an operation does with a table: these privileges, or (partitioned) ownership."""

    schema: str
    table: str
    privileges: tuple[str, ...] = ()
    owner_if_partitioned: bool = False  # a replace load attaches and detaches partitions


def table_use(target: TableTarget, operation: str) -> TargetUse:
    """What ``load``, ``replay`` or ``check`` does with ``target``'s table."""
    upsert = target.mode is WriteMode.UPSERT
    if operation == "check":
        privileges: tuple[str, ...] = ("SELECT",)
    elif operation == "replay":
        privileges = ("SELECT", "INSERT", "UPDATE") if upsert else ("SELECT", "INSERT")
    else:
        privileges = ("SELECT", "INSERT", "UPDATE") if upsert else ("SELECT", "INSERT", "DELETE")
    owner = operation == "load" and not upsert
    return TargetUse(target.schema, target.table, privileges, owner_if_partitioned=owner)


async def operation_needs(
    conn: asyncpg.Connection, target: TableTarget, ledger_schema: str, operation: str
) -> list[Missing]:
    """Everything ``operation`` on ``target`` needs: its table, its schema, the ledger."""
    use = table_use(target, operation)
    missing = await target_needs(conn, use, create=operation == "load")
    return missing + await ledger_needs(conn, ledger_schema, write=operation != "check")


@contextlib.asynccontextmanager
async def explained(conn: asyncpg.Connection, doing: str, needs: Needs) -> AsyncIterator[None]:
    """A 42501 inside becomes a ``PermissionDeniedError`` naming each missing GRANT.

    Nothing is asked on the happy path: only when the server refused does ``needs`` ask
    what the operation lacks (after the failed transaction rolled back; inside one, an
    outer ``explained`` does it). Refused for a reason ``needs`` does not know of, the
    error goes on as it came (``classify`` still names it a permission error).
    """
    try:
        yield
    except asyncpg.InsufficientPrivilegeError as exc:
        if conn.is_in_transaction() or conn.is_closed():
            raise
        try:
            missing = await needs(conn)
        except asyncpg.PostgresError:
            raise exc from None
        if missing:
            await _refuse(conn, doing, missing, exc)
        raise


async def create_schema_if_missing(conn: asyncpg.Connection, schema: str) -> None:
    """``CREATE SCHEMA`` only when it is missing: a DBA's pre-created schema needs no
    CREATE on the database (``IF NOT EXISTS`` asks for that privilege all the same)."""
    missing = "SELECT NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
    if await conn.fetchval(missing, schema):
        await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")


async def ledger_needs(
    conn: asyncpg.Connection, schema: str, *, write: bool = True, ddl: bool = False
) -> list[Missing]:
    """The ledger schema's USAGE (+ CREATE to create or migrate), its tables' privileges."""
    missing = await missing_on_schema(conn, schema, ("USAGE", "CREATE") if ddl else ("USAGE",))
    if missing:
        return missing
    privileges = LEDGER_WRITE if write else ("SELECT",)
    for table in LEDGER_TABLES:
        missing += await missing_on_table(conn, TargetUse(schema, table, privileges))
    return missing


async def target_needs(conn: asyncpg.Connection, use: TargetUse, *, create: bool) -> list[Missing]:
    """The target schema's USAGE (+ CREATE when the operation creates tables), its table's."""
    missing = await missing_on_schema(
        conn, use.schema, ("USAGE", "CREATE") if create else ("USAGE",)
    )
    return missing or await missing_on_table(conn, use)


async def require(conn: asyncpg.Connection, doing: str, missing: Sequence[Missing]) -> None:
    """Refuse ``doing`` naming every missing privilege and its GRANT; nothing if none."""
    if missing:
        await _refuse(conn, doing, missing, None)


async def _refuse(
    conn: asyncpg.Connection, doing: str, missing: Sequence[Missing], cause: BaseException | None
) -> None:
    role = await conn.fetchval("SELECT current_user")
    raise PermissionDeniedError(
        f"role {role!r} may not {doing}: it lacks "
        + "; ".join(m.what for m in missing)
        + ". As the objects' owner (or a superuser), run: "
        + " ".join(f"{m.grant};" for m in missing)
        + " (README, Production PostgreSQL: what each operation needs)",
        sqlstate="42501",
    ) from cause


async def missing_on_schema(
    conn: asyncpg.Connection, schema: str, privileges: Sequence[str]
) -> list[Missing]:
    """USAGE / CREATE on a schema; CREATE on the database when the schema is missing."""
    role, database, exists = await conn.fetchrow(
        "SELECT current_user, current_database(), "
        "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        schema,
    )
    if not exists:
        if await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"):
            return []
        return [
            Missing(
                f"CREATE on database {quote_ident(database)} (schema {quote_ident(schema)} does "
                "not exist; create it, or let the role create it)",
                f"CREATE SCHEMA {quote_ident(schema)}; GRANT USAGE, CREATE ON SCHEMA "
                f"{quote_ident(schema)} TO {quote_ident(role)}",
            )
        ]
    lacking = [
        p
        for p in privileges
        if not await conn.fetchval("SELECT has_schema_privilege($1, $2)", schema, p)
    ]
    if not lacking:
        return []
    grant = ", ".join(lacking)
    return [
        Missing(
            f"{grant} on schema {quote_ident(schema)}",
            f"GRANT {grant} ON SCHEMA {quote_ident(schema)} TO {quote_ident(role)}",
        )
    ]


async def missing_on_table(conn: asyncpg.Connection, use: TargetUse) -> list[Missing]:
    """Ownership or privileges on an existing table (a missing one is the role's to create)."""
    name = qualified(use.schema, use.table)
    row = await conn.fetchrow(
        "SELECT current_user AS role, c.oid, pg_has_role(c.relowner, 'USAGE') AS owns, "
        "c.relkind = 'p' AS partitioned "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2",
        use.schema,
        use.table,
    )
    if row is None:
        return []
    if use.owner_if_partitioned and row["partitioned"]:
        if row["owns"]:
            return []
        return [
            Missing(
                f"ownership of table {name} (a replace load attaches and detaches its "
                "partitions, which only the owner may)",
                f"ALTER TABLE {name} OWNER TO {quote_ident(row['role'])}",
            )
        ]
    lacking = [
        p
        for p in use.privileges
        if not await conn.fetchval("SELECT has_table_privilege($1::oid, $2)", row["oid"], p)
    ]
    if not lacking:
        return []
    grant = ", ".join(lacking)
    return [
        Missing(
            f"{grant} on table {name}",
            f"GRANT {grant} ON TABLE {name} TO {quote_ident(row['role'])}",
        )
    ]


def grant_statements(
    role: str, ledger_schema: str, target_schemas: Sequence[str], database: str | None = None
) -> list[str]:
    """The DBA layout: the schemas pre-created, the role given USAGE + CREATE on them.

    The role then creates (and owns) the ledger tables and the target tables, so every
    operation has what it needs and nothing more: no CREATE on the database, no
    superuser, no other schema. Run as the database's owner or a superuser.
    """
    statements = []
    for schema in dict.fromkeys((ledger_schema, *target_schemas)):
        s = quote_ident(schema)
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {s}")
        statements.append(f"GRANT USAGE, CREATE ON SCHEMA {s} TO {quote_ident(role)}")
    if database is not None:
        statements.insert(
            0, f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {quote_ident(role)}"
        )
    return statements
