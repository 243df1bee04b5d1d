"""A NOSUPERUSER role holding exactly the documented grants runs everything; a missing
grant is named, with the statement that gives it (one test per operation)."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.dead_letter_cli import main
from etl_assets.errors import PermissionDeniedError
from etl_assets.postgres.housekeeping import cleanup
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.privileges import grant_statements
from etl_assets.postgres.replay import replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy
from etl_assets.postgres.target import WriteMode
from etl_assets.postgres.verify import audit_partition
from etl_assets_tests.dagster.conftest import instance, landing  # noqa: F401 - fixtures
from etl_assets_tests.dagster.test_behind_pgbouncer import whole_flow
from etl_assets_tests.dagster.test_pipeline import Landing
from etl_assets_tests.postgres.helpers import DAY, events_target, execute, fetch, load, records


@pytest.fixture
def role(db_dsn: str, pg_dsn: str) -> Iterator[str]:
    """A fresh NOSUPERUSER login role, its objects dropped after the test."""
    name = f"etl_loader_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(pg_dsn, f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'))
    yield name
    asyncio.run(execute(db_dsn, f'DROP OWNED BY "{name}" CASCADE'))
    asyncio.run(execute(pg_dsn, f'DROP ROLE "{name}"'))


def as_role(db_dsn: str, role: str) -> str:
    parts = urllib.parse.urlsplit(db_dsn)
    return parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()


def grant(db_dsn: str, statements: list[str]) -> None:
    asyncio.run(execute(db_dsn, "; ".join(statements)))


def refusal(role: str, doing: str, lacks: str, run: str) -> str:
    return (
        f"role {role!r} may not {doing}: it lacks {lacks}. As the objects' owner (or a "
        f"superuser), run: {run}; (README, Production PostgreSQL: what each operation needs)"
    )


def test_the_documented_grants_run_the_whole_flow(
    role: str, db_dsn: str, instance: dg.DagsterInstance, landing: Landing,  # noqa: F811
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Schemas pre-created, USAGE + CREATE on them: load, reload, checks, replay, cleanup."""
    grant(db_dsn, grant_statements(role, "etl", ["public"]))
    whole_flow(as_role(db_dsn, role), db_dsn, instance, landing, tmp_path, monkeypatch, capsys)


def test_a_first_load_without_create_on_the_ledger_schema_names_the_grant(
    role: str, db_dsn: str
) -> None:
    """USAGE alone on a pre-created ledger schema: the migration says GRANT CREATE."""
    grant(db_dsn, ['CREATE SCHEMA etl', f'GRANT USAGE ON SCHEMA etl TO "{role}"',
                   f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'])  # fmt: skip
    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(load(as_role(db_dsn, role), events_target("public"), records(3),
                         ledger_schema="etl"))  # fmt: skip
    assert str(caught.value) == refusal(
        role, "create or migrate the ledger in schema 'etl'", 'CREATE on schema "etl"',
        f'GRANT CREATE ON SCHEMA "etl" TO "{role}"',
    )  # fmt: skip


def test_a_missing_ledger_schema_without_create_on_the_database_names_both_ways(
    role: str, db_dsn: str
) -> None:
    """No schema and no CREATE on the database: create it, or grant it."""
    database = urllib.parse.urlsplit(db_dsn).path.lstrip("/")
    grant(db_dsn, [f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'])
    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(load(as_role(db_dsn, role), events_target("public"), records(3),
                         ledger_schema="etl"))  # fmt: skip
    assert str(caught.value) == refusal(
        role, "create or migrate the ledger in schema 'etl'",
        f'CREATE on database "{database}" (schema "etl" does not exist; create it, or let '
        "the role create it)",
        f'CREATE SCHEMA "etl"; GRANT USAGE, CREATE ON SCHEMA "etl" TO "{role}"',
    )  # fmt: skip


def test_a_load_without_create_on_the_target_schema_names_the_grant(role: str, db_dsn: str) -> None:
    """The ledger's schema is granted, the target's only USAGE: GRANT CREATE on it."""
    grant(db_dsn, [*grant_statements(role, "etl", []), "CREATE SCHEMA sales",
                   f'GRANT USAGE ON SCHEMA sales TO "{role}"'])  # fmt: skip
    target = events_target("sales")
    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(load(as_role(db_dsn, role), target, records(3), ledger_schema="etl"))
    assert str(caught.value) == refusal(
        role, f"load {target.sql_name}", 'CREATE on schema "sales"',
        f'GRANT CREATE ON SCHEMA "sales" TO "{role}"',
    )  # fmt: skip


def test_a_load_into_a_partitioned_table_it_does_not_own_names_the_owner_change(
    role: str, db_dsn: str
) -> None:
    """A replace load swaps partitions, which only the owner may: said before any write."""
    grant(db_dsn, grant_statements(role, "etl", ["public"]))
    target = events_target("public")
    asyncio.run(execute(db_dsn, target.create_table_sql()))  # the DBA's table, not the role's
    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(load(as_role(db_dsn, role), target, records(3), ledger_schema="etl"))
    assert str(caught.value) == refusal(
        role, f"load {target.sql_name}",
        f"ownership of table {target.sql_name} (a replace load attaches and detaches its "
        "partitions, which only the owner may)",
        f'ALTER TABLE {target.sql_name} OWNER TO "{role}"',
    )  # fmt: skip


def test_checks_without_select_on_the_target_name_the_grant(role: str, db_dsn: str) -> None:
    """The check reads the table: GRANT SELECT on it."""
    grant(db_dsn, grant_statements(role, "etl", ["public"]))
    target = events_target("public", WriteMode.UPSERT)
    asyncio.run(load(as_role(db_dsn, role), target, records(3), ledger_schema="etl"))
    asyncio.run(execute(db_dsn, f'REVOKE SELECT ON {target.sql_name} FROM "{role}"'))
    asyncio.run(execute(db_dsn, f"ALTER TABLE {target.sql_name} OWNER TO CURRENT_USER"))

    async def check() -> object:
        async with PostgresResource(dsn=as_role(db_dsn, role)).pool() as pool, pool.acquire() as c:
            return await audit_partition(c, Ledger("etl"), target, DAY)

    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(check())
    assert str(caught.value) == refusal(
        role, f"check {target.sql_name}", f"SELECT on table {target.sql_name}",
        f'GRANT SELECT ON TABLE {target.sql_name} TO "{role}"',
    )  # fmt: skip


def test_a_replay_without_insert_on_the_target_names_the_grant(role: str, db_dsn: str) -> None:
    """A replay writes the target: GRANT INSERT on it, before a letter is claimed."""
    grant(db_dsn, grant_statements(role, "etl", ["public"]))
    target = events_target("public", WriteMode.UPSERT)
    asyncio.run(load(as_role(db_dsn, role), target, records(3), ledger_schema="etl"))
    owned = f"ALTER TABLE {target.sql_name} OWNER TO CURRENT_USER"
    asyncio.run(execute(db_dsn, f'{owned}; GRANT SELECT, UPDATE ON {target.sql_name} TO "{role}"'))

    async def replay() -> object:
        async with PostgresResource(dsn=as_role(db_dsn, role)).pool() as pool:
            return await replay_dead_letters(pool, target, DAY, load_id="replay-1", model=None,
                                             settings=None)  # fmt: skip

    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(replay())
    assert str(caught.value) == refusal(
        role, f"replay dead letters into {target.sql_name}", f"INSERT on table {target.sql_name}",
        f'GRANT INSERT ON TABLE {target.sql_name} TO "{role}"',
    )  # fmt: skip


def test_cleanup_without_the_ledger_tables_names_the_grants(role: str, db_dsn: str) -> None:
    """A ledger another role created: cleanup names the table privileges it lacks."""
    asyncio.run(load(db_dsn, events_target("public"), records(3), ledger_schema="etl"))
    asyncio.run(
        execute(
            db_dsn,
            "INSERT INTO etl.partition_loads (target, partition_key, "
            "load_id, mode, status) VALUES ('t', 'd', 'dead', 'replace', 'loading')",
        )
    )
    grant(db_dsn, [f'GRANT USAGE ON SCHEMA etl TO "{role}"',
                   f'GRANT SELECT ON ALL TABLES IN SCHEMA etl TO "{role}"'])  # fmt: skip

    async def clean() -> object:
        async with PostgresResource(dsn=as_role(db_dsn, role)).pool() as pool:
            return await cleanup(pool, Ledger("etl"), RetryPolicy())

    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(clean())
    assert str(caught.value) == ledger_write_refusal(role, "clean up dead loads")


def test_a_discard_without_the_ledger_tables_names_the_grants(
    role: str, db_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's discard updates letters: exit 2, the table privileges and GRANTs named."""
    asyncio.run(load(db_dsn, events_target("public"), records(3), ledger_schema="etl"))
    grant(db_dsn, [f'GRANT USAGE ON SCHEMA etl TO "{role}"',
                   f'GRANT SELECT ON ALL TABLES IN SCHEMA etl TO "{role}"'])  # fmt: skip
    monkeypatch.setenv("ETL_ASSETS_PG_DSN", as_role(db_dsn, role))
    assert main(["discard", "raw_logs", "2024-03-01", "--id", "1", "--reason", "test"]) == 2
    expected = ledger_write_refusal(role, "discard dead letters")
    assert capsys.readouterr().err == f"etl-assets-dead-letters: {expected}\n"


def test_a_role_with_create_on_the_database_creates_missing_schemas_alike(
    role: str, db_dsn: str
) -> None:
    """Ledger and target schemas missing: both created (only then is CREATE asked for)."""
    database = urllib.parse.urlsplit(db_dsn).path.lstrip("/")
    grant(db_dsn, [f'GRANT CREATE ON DATABASE "{database}" TO "{role}"'])
    target = events_target("landing")
    report = asyncio.run(load(as_role(db_dsn, role), target, records(3), ledger_schema="etl"))
    assert (report.written, report.published) == (3, True)
    owners = asyncio.run(
        fetch(db_dsn, "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                      "WHERE nspname IN ('etl', 'landing') ORDER BY 1")
    )  # fmt: skip
    assert [tuple(r) for r in owners] == [("etl", role), ("landing", role)]


def test_the_privilege_check_knows_every_table_of_the_ledger_layout() -> None:
    """A table the layout gains is asked for too (deleted_letters was missed once)."""
    from etl_assets.postgres.ledger_layout import LedgerLayout
    from etl_assets.postgres.privileges import LEDGER_TABLES
    from etl_assets.postgres.sql import qualified

    layout = LedgerLayout("etl")
    tables = {v for k, v in vars(layout).items() if k != "schema"}
    assert tables == {qualified("etl", name) for name in LEDGER_TABLES}


EXPECTED_LEDGER_TABLES = (  # written out: the expectation does not come from the code
    "load_ledger",
    "dead_letters",
    "partition_loads",
    "deleted_letters",
    "ledger_version",
    "load_leases",
)


def ledger_write_refusal(role: str, doing: str) -> str:
    """The refusal of an operation that writes every ledger table, each GRANT named."""
    tables = EXPECTED_LEDGER_TABLES
    return refusal(
        role, doing,
        "; ".join(f'INSERT, UPDATE, DELETE on table "etl"."{t}"' for t in tables),
        "; ".join(f'GRANT INSERT, UPDATE, DELETE ON TABLE "etl"."{t}" TO "{role}"'
                  for t in tables),
    )  # fmt: skip
