"""``etl-assets-dead-letters``: look at, fix, replay and discard a partition's dead letters.

    etl-assets-dead-letters list raw_logs 2024-01-03
    etl-assets-dead-letters export raw_logs 2024-01-03 > letters.jsonl   # edit the payloads
    etl-assets-dead-letters replay raw_logs 2024-01-03 --fixes letters.jsonl
    etl-assets-dead-letters discard raw_logs 2024-01-03 --id 12 --reason "test traffic"
    etl-assets-dead-letters cleanup [--keep-resolved-days 90]
    etl-assets-dead-letters grants etl_loader   # the SQL a DBA runs for a least-privilege role

The server is ``$ETL_ASSETS_PG_DSN`` (else the embedded one of ``$ETL_ASSETS_HOME``); the
assets come from a Dagster code location module (``-m``, default the example's). Every
write goes through the same ledgered replay as the ``replay_dead_letters`` job. Exit
code 0 on success, 1 when the run failed or a replayed letter failed again (it stays
open, with its new error), 2 for a usage or configuration mistake; 141 when the reader
of its output went away (``| head``), quietly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import importlib
import itertools
import os
import sys
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import dagster as dg

from etl_assets.dead_letter_file import latest_error, replay_filter, write_letters
from etl_assets.errors import ConfigurationError, EtlError
from etl_assets.io_manager import data_date
from etl_assets.jobs import replayable_tables, table_of
from etl_assets.postgres.housekeeping import cleanup
from etl_assets.postgres.ledger import Ledger, LoadKey
from etl_assets.postgres.loader import LoadSettings
from etl_assets.postgres.privileges import Missing, explained, grant_statements, ledger_needs
from etl_assets.postgres.replay import replay_dead_letters
from etl_assets.postgres.resource import PostgresResource
from etl_assets.postgres.retry import RetryPolicy, with_retries
from etl_assets.spec import PostgresTable

__all__ = ["main"]

DEFAULT_MODULE = "etl_assets.example.definitions"
DSN_ENV = "ETL_ASSETS_PG_DSN"
EXCERPT = 100
T = TypeVar("T")


SIGPIPE_EXIT = 128 + 13  # what a shell reports for a writer whose reader went away


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = int(args.command(args))
        sys.stdout.flush()  # a closed pipe is met here, not in the interpreter's exit
    except BrokenPipeError:
        # `... list | head`: the reader is gone; stop quietly, as Unix tools do, and keep
        # the interpreter's final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except ConfigurationError as exc:
        print(f"etl-assets-dead-letters: {exc}", file=sys.stderr)
        return 2
    except EtlError as exc:
        print(f"etl-assets-dead-letters: failed: {exc}", file=sys.stderr)
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etl-assets-dead-letters",
        description="Look at, fix, replay and discard a partition's open dead letters.",
    )
    parser.add_argument("-m", "--module", default=DEFAULT_MODULE, help="code location module")
    parser.add_argument("--ledger-schema", default="etl")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(command=run)
        if name not in ("cleanup", "grants"):
            sub.add_argument("asset", help="e.g. raw_logs")
            sub.add_argument("partition", type=_day, help="data date, YYYY-MM-DD")
        return sub

    command("list", _list, "Show the partition's open dead letters.")
    command("export", _export, "Write the open letters as JSON lines (stdout), to fix by hand.")
    replay = command("replay", _replay, "Revalidate and write the open letters (once each).")
    replay.add_argument("--fixes", help="an exported file with corrected payloads")
    replay.add_argument("--transform", help="'package.module:function' applied to payloads")
    replay.add_argument("--error-class", action="append", default=[], dest="error_classes")
    replay.add_argument("--id", action="append", type=int, default=[], dest="ids")
    replay.add_argument("--batch-size", type=int, default=10_000)
    discard = command("discard", _discard, "Resolve open letters by hand (kept, with who/why).")
    discard.add_argument("--id", action="append", type=int, required=True, dest="ids")
    discard.add_argument("--reason", required=True)
    discard.add_argument("--by", default=None, help="who (default: the OS user)")
    clean = command("cleanup", _cleanup, "Abandon dead loads; apply a letter retention.")
    clean.add_argument("--keep-resolved-days", type=int, default=None)
    grants = command("grants", _grants, "Print the SQL that lets ROLE run every operation.")
    grants.add_argument("role", help="the role the loads log in as")
    return parser


def _day(text: str) -> str:
    try:
        return data_date(text).isoformat()
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _spec(args: argparse.Namespace) -> PostgresTable:
    return table_of(_specs(args), args.asset)


def _specs(args: argparse.Namespace) -> dict[str, PostgresTable]:
    try:
        with warnings.catch_warnings():  # a code location's beta/preview notes are not ours
            warnings.simplefilter("ignore", dg.BetaWarning)
            warnings.simplefilter("ignore", dg.PreviewWarning)
            module = importlib.import_module(args.module)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import code location {args.module!r}: {exc}") from None
    defs = getattr(module, "defs", None)
    if not isinstance(defs, dg.Definitions):
        raise ConfigurationError(f"module {args.module!r} has no Definitions named `defs`")
    assets = [
        a
        for a in defs.assets or ()
        if isinstance(a, dg.AssetsDefinition)
        and any(k.startswith("etl_assets/table") for k in a.metadata_by_key.get(a.key, {}))
    ]
    return replayable_tables(assets)


def _with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    return PostgresResource(dsn=os.environ.get(DSN_ENV) or None).run(work)


async def _open_letters(
    pool: asyncpg.Pool, ledger: Ledger, target: str, partition: str
) -> tuple[str | None, list[asyncpg.Record]]:
    async def read(conn: asyncpg.Connection) -> tuple[str | None, list[asyncpg.Record]]:
        await ledger.ensure(conn)
        load = await ledger.current_load(conn, target, partition)
        if load is None:
            return None, []
        key = LoadKey(target, partition, load["load_id"])
        return key.load_id, await ledger.open_letters(conn, key, after_id=0, limit=1_000_000)

    return await with_retries(pool, RetryPolicy(), read)


async def _unfinished_letters(
    pool: asyncpg.Pool, ledger: Ledger, target: str, partition: str
) -> list[asyncpg.Record]:
    async def read(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        await ledger.ensure(conn)
        return await ledger.unfinished_letters(conn, target, partition, limit=1_000_000)

    return await with_retries(pool, RetryPolicy(), read)


def _list(args: argparse.Namespace) -> int:
    """The open letters of the partition's current load, then the pending ones of loads
    that failed (or still run): a failed load's "see etl.dead_letters" leads here."""
    target = _spec(args).target()
    ledger = Ledger(args.ledger_schema)

    async def read(pool: asyncpg.Pool) -> tuple[str | None, list[Any], list[Any]]:
        load_id, letters = await _open_letters(pool, ledger, target.name, args.partition)
        pending = await _unfinished_letters(pool, ledger, target.name, args.partition)
        return load_id, letters, pending

    load_id, letters, pending = _with_pool(read)
    if load_id is None and not pending:
        print(f"{args.asset} {args.partition}: never loaded, no dead letters")
        return 0
    if load_id is None:
        print(f"{args.asset} {args.partition}: never published, no open dead letters")
    else:
        print(f"{args.asset} {args.partition}: {len(letters)} open dead letter(s) (load {load_id})")
        _print_letters(letters)
    for (unfinished, status), rows in itertools.groupby(
        pending, key=lambda r: (r["load_id"], r["load_status"])
    ):
        group = list(rows)
        print(
            f"{args.asset} {args.partition}: {len(group)} pending dead letter(s) of the "
            f"{status} load {unfinished} (not replayable: they open if that load is resumed "
            "and publishes; the partition's next load supersedes them)"
        )
        _print_letters(group)
    return 0


def _print_letters(letters: Sequence[asyncpg.Record]) -> None:
    for row in letters:
        error_class, error = latest_error(row)
        one_line = error.replace("\n", " ")
        print(
            f"  id {row['id']}  {error_class}  replays {row['replay_attempts']}  "
            f"{one_line[:EXCERPT]}"
        )


def _export(args: argparse.Namespace) -> int:
    target = _spec(args).target()
    ledger = Ledger(args.ledger_schema)
    _, letters = _with_pool(lambda pool: _open_letters(pool, ledger, target.name, args.partition))
    count = write_letters(letters, sys.stdout)
    print(f"{count} open dead letter(s) exported", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.batch_size < 1:
        raise ConfigurationError("--batch-size must be at least 1")
    only = replay_filter(args.error_classes, args.ids, args.transform, args.fixes)
    settings = LoadSettings(batch_size=args.batch_size, ledger_schema=args.ledger_schema)
    load_id = f"replay:cli-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    target, day, model = spec.target(), data_date(args.partition), spec.model
    report = _with_pool(
        lambda pool: replay_dead_letters(
            pool, target, day, load_id=load_id, model=model, settings=settings, only=only
        )
    )
    print(
        f"{args.asset} {args.partition}: replayed {report.replayed} dead letter(s): "
        f"{report.written} written, {report.dead_lettered} failed again (still open) "
        f"[{report.load_id}]"
    )
    if report.dead_lettered:
        print(
            f"{report.dead_lettered} letter(s) failed again and stay open: see `list` for "
            "their new errors",
            file=sys.stderr,
        )
        return 1
    return 0


def _discard(args: argparse.Namespace) -> int:
    target = _spec(args).target()
    ledger = Ledger(args.ledger_schema)
    by = args.by or getpass.getuser()

    async def discard(conn: asyncpg.Connection) -> list[int]:
        await ledger.ensure(conn)
        async with explained(conn, "discard dead letters", needs):
            return await ledger.discard(
                conn, target.name, args.partition, args.ids, by=by, why=args.reason
            )

    def needs(conn: asyncpg.Connection) -> Awaitable[list[Missing]]:
        return ledger_needs(conn, ledger.schema)

    done = _with_pool(lambda pool: with_retries(pool, RetryPolicy(), discard))
    missing = sorted(set(args.ids) - set(done))
    print(f"{args.asset} {args.partition}: discarded {len(done)} letter(s) {done} as {by}")
    if missing:
        print(f"not open in this partition (left as they are): {missing}", file=sys.stderr)
        return 1
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    ledger = Ledger(args.ledger_schema)
    report = _with_pool(
        lambda pool: cleanup(
            pool, ledger, RetryPolicy(), keep_resolved_letters_days=args.keep_resolved_days
        )
    )
    for load in report.abandoned:
        print(f"abandoned dead load {load.key.load_id} of {load.key} ({load.status})")
    print(
        f"{len(report.abandoned)} dead load(s) abandoned, "
        f"{report.letters_deleted} resolved letter(s) deleted"
    )
    return 0


def _grants(args: argparse.Namespace) -> int:
    """No server needed: the schemas come from the code location's tables."""
    schemas = sorted({spec.target().schema for spec in _specs(args).values()})
    for statement in grant_statements(args.role, args.ledger_schema, schemas):
        print(f"{statement};")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
