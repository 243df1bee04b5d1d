"""Fixtures for the Dagster layer: a fresh database per test, sample landing data, resources."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from etl_assets.example import definitions
from etl_assets.example.landing import SampleDay, write_sample_day
from etl_assets.example.logs import RawLogsConfig
from etl_assets.postgres.resource import PostgresResource

FIRST_DAY = dt.date(2024, 3, 1)
DAYS = [FIRST_DAY + dt.timedelta(days=i) for i in range(7)]
LINES_PER_DAY = 300


@pytest.fixture(scope="session")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[dt.date, SampleDay]]:
    """Seven sample days of logs, three malformed lines each."""
    folder = tmp_path_factory.mktemp("landing")
    return folder, {day: write_sample_day(folder, day, LINES_PER_DAY) for day in DAYS}


@pytest.fixture
def resources(db_dsn: str) -> dict[str, Any]:
    return definitions.resources(PostgresResource(dsn=db_dsn))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def logs_config(landing: Path) -> dg.RunConfig:
    return dg.RunConfig(ops={"raw_logs": RawLogsConfig(landing_dir=str(landing))})


def drop_rows_after_publish(day: str | None = None, table: str = "logs") -> str:
    """SQL of a trigger that deletes 5 rows of a day of public.<table> as its load publishes.

    A loss behind the IO manager's back, for the blocking check to catch; ``day`` limits it
    to one partition. ctid repeats across the table's partitions: the day is pinned on
    both sides of the DELETE, or other days would lose rows too.
    """
    only_day = f" AND NEW.partition_key = '{day}'" if day else ""
    return f"""
CREATE FUNCTION public.drop_rows_after_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'published' AND NEW.target = 'public.{table}'{only_day} THEN
        DELETE FROM public.{table} WHERE data_date = NEW.partition_key::date AND ctid IN (
            SELECT ctid FROM public.{table} WHERE data_date = NEW.partition_key::date LIMIT 5);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER drop_rows_after_publish AFTER UPDATE ON etl.partition_loads
    FOR EACH ROW EXECUTE FUNCTION public.drop_rows_after_publish();
"""
