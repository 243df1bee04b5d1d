"""The IO manager's contract at its edges: clear errors for user mistakes, streaming input.

(No ``from __future__ import annotations``: the assets below are decorated in the tests.)
"""

import asyncio
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pydantic
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.example.partitions import daily
from etl_assets.io_manager import PartitionRecords
from etl_assets.postgres.target import WriteMode
from etl_assets.spec import PostgresTable
from etl_assets_tests.postgres.helpers import fetch


class Reading(pydantic.BaseModel):
    sensor_id: int
    celsius: float


READINGS = PostgresTable(
    table="readings", model=Reading, primary_key=("data_date", "sensor_id"), batch_size=10_000
)
DAY = "2024-05-01"


def readings(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"sensor_id": i, "celsius": i / 10}


def error_of(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    assert error is not None
    return error.message


def chain_of(result: dg.ExecuteInProcessResult) -> list[str]:
    """Every message of the step failure's cause chain, outermost first."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error, messages = failure.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return messages


def run(
    asset: dg.AssetsDefinition, resources: dict[str, Any], **kw: Any
) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], resources=resources, raise_on_error=False, **kw)


def test_a_generator_is_streamed_in_batches_and_upstream_reads_it_back(
    db_dsn: str, resources: dict[str, Any]
) -> None:
    @dg.asset(
        partitions_def=daily, io_manager_key="postgres_io_manager", metadata=READINGS.metadata()
    )
    def readings_asset(context: dg.AssetExecutionContext) -> PartitionRecords:
        # A bare generator would be taken by Dagster as a stream of events: key it instead.
        return {context.partition_key: readings(25_000)}

    seen: dict[str, int] = {}

    @dg.asset(partitions_def=daily, ins={"readings_asset": dg.AssetIn()})
    def consumer(readings_asset: list[dict[str, Any]]) -> None:
        seen["partition"] = len(readings_asset)

    @dg.asset(ins={"readings_asset": dg.AssetIn()})
    def whole_table(readings_asset: list[dict[str, Any]]) -> None:
        seen["all"] = len(readings_asset)

    result = dg.materialize([readings_asset, consumer], resources=resources, partition_key=DAY)
    everything = dg.materialize(
        [readings_asset.to_source_asset(), whole_table], resources=resources
    )

    assert result.success
    assert everything.success
    [mat] = result.asset_materializations_for_node("readings_asset")
    assert mat.metadata["batches"].value == 3  # 10k + 10k + 5k
    assert mat.metadata["written"].value == 25_000
    assert seen == {"partition": 25_000, "all": 25_000}
    rows = asyncio.run(fetch(db_dsn, "SELECT count(*), sum(sensor_id) FROM public.readings"))
    assert tuple(rows[0]) == (25_000, sum(range(25_000)))


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            None,
            "or a list or an iterator of records (pydantic models or dicts), got NoneType",
        ),
        ("text", "or a list or an iterator of records (pydantic models or dicts), got str"),
        (
            {"2024-05-02": []},
            "returned records for partitions ['2024-05-02'], but the run covers ['2024-05-01']",
        ),
    ],
)
def test_wrong_return_values_fail_with_a_clear_error(
    resources: dict[str, Any], returned: Any, message: str
) -> None:
    @dg.asset(
        partitions_def=daily, io_manager_key="postgres_io_manager", metadata=READINGS.metadata()
    )
    def bad() -> Any:
        return returned

    result = run(bad, resources, partition_key=DAY)

    assert not result.success
    assert message in error_of(result)


def test_an_unpartitioned_asset_is_told_to_use_daily_partitions(resources: dict[str, Any]) -> None:
    @dg.asset(io_manager_key="postgres_io_manager", metadata=READINGS.metadata())
    def unpartitioned() -> list[dict[str, Any]]:
        return []

    result = run(unpartitioned, resources)

    assert "asset unpartitioned is not partitioned" in error_of(result)


def test_an_asset_without_table_metadata_is_told_how_to_declare_it(
    resources: dict[str, Any],
) -> None:
    @dg.asset(partitions_def=daily, io_manager_key="postgres_io_manager")
    def undeclared() -> list[dict[str, Any]]:
        return []

    result = run(undeclared, resources, partition_key=DAY)

    assert "asset undeclared has no PostgresTable metadata" in error_of(result)


def test_table_spec_mistakes_are_configuration_errors_at_definition_time() -> None:
    with pytest.raises(ConfigurationError, match="mode 'merge' is not one of replace, upsert"):
        PostgresTable(table="t", model=Reading, mode="merge")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="needs a primary_key"):
        PostgresTable(table="t", model=Reading, mode=WriteMode.UPSERT)

    class Local(pydantic.BaseModel):
        x: int

    with pytest.raises(ConfigurationError, match="defined inside a function"):
        PostgresTable(table="t", model=Local)


def test_spec_round_trips_through_asset_metadata() -> None:
    spec = PostgresTable(
        table="daily", model=Reading, partition_column="day", primary_key=("day", "sensor_id"),
        mode=WriteMode.UPSERT, batch_size=500, max_dead_letter_ratio=0.2,
    )  # fmt: skip
    assert PostgresTable.from_metadata(spec.metadata(), "a") == spec
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        PostgresTable.from_metadata({**spec.metadata(), "etl_assets/model": "no.such:Model"}, "a")


def test_a_dataframe_output_lands_row_for_row_and_reads_back_in_every_shape(
    db_dsn: str, resources: dict[str, Any]
) -> None:
    """1,000 pandas rows are 1,000 rows written (never 3 column names), read back 5 ways."""
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    from etl_assets import PartitionStream

    @dg.asset(
        partitions_def=daily, io_manager_key="postgres_io_manager", metadata=READINGS.metadata()
    )
    def frame_readings() -> pd.DataFrame:
        return pd.DataFrame({"sensor_id": range(1_000), "celsius": [i / 10 for i in range(1_000)]})

    seen: dict[str, Any] = {}

    @dg.asset(partitions_def=daily)
    def as_pandas(frame_readings: pd.DataFrame) -> None:
        seen["pandas"] = (len(frame_readings), str(frame_readings["sensor_id"].dtype))
        seen["date"] = frame_readings["data_date"].iloc[0]

    @dg.asset(partitions_def=daily)
    def as_polars(frame_readings: pl.DataFrame) -> None:
        seen["polars"] = (frame_readings.height, frame_readings["celsius"].sum())

    @dg.asset(partitions_def=daily)
    def as_arrow(frame_readings: pa.Table) -> None:
        seen["arrow"] = (frame_readings.num_rows, str(frame_readings.schema.field("celsius").type))

    @dg.asset(partitions_def=daily)
    def as_stream(frame_readings: PartitionStream) -> None:
        frame_readings.batch_size = 300
        seen["stream"] = [batch.num_rows for batch in frame_readings]

    @dg.asset(partitions_def=daily)
    def as_dicts(frame_readings: list[dict[str, Any]]) -> None:
        seen["dicts"] = frame_readings[999]

    result = dg.materialize(
        [frame_readings, as_pandas, as_polars, as_arrow, as_stream, as_dicts],
        resources=resources,
        partition_key=DAY,
    )

    assert result.success
    [mat] = result.asset_materializations_for_node("frame_readings")
    assert (mat.metadata["enqueued"].value, mat.metadata["written"].value) == (1_000, 1_000)
    assert mat.metadata["dead_lettered"].value == 0
    assert seen["pandas"] == (1_000, "int64")
    assert str(seen["date"]) == DAY
    assert seen["polars"] == (1_000, pytest.approx(sum(i / 10 for i in range(1_000))))
    assert seen["arrow"] == (1_000, "double")
    assert seen["stream"] == [300, 300, 300, 100]
    assert seen["dicts"]["sensor_id"] == 999
    rows = asyncio.run(fetch(db_dsn, "SELECT count(*), sum(sensor_id) FROM public.readings"))
    assert tuple(rows[0]) == (1_000, sum(range(1_000)))


def test_a_series_output_fails_the_run_naming_what_to_return(resources: dict[str, Any]) -> None:
    """A pandas Series iterates as values: the step fails with what to return instead."""
    import pandas as pd

    @dg.asset(
        partitions_def=daily, io_manager_key="postgres_io_manager", metadata=READINGS.metadata()
    )
    def series() -> Any:
        return pd.Series([1, 2, 3])

    result = run(series, resources, partition_key=DAY)

    assert not result.success
    assert "got a pandas.Series, which iterates as values, not records" in error_of(result)


@pytest.mark.parametrize(("ratio", "succeeds"), [(None, False), (0.5, True)])
def test_the_reject_budget_is_a_setting_per_asset(
    resources: dict[str, Any], ratio: float | None, succeeds: bool
) -> None:
    """4 of 10 records invalid: past the default 5% budget, within an asset's own 50%."""
    spec = PostgresTable(
        table="readings", model=Reading, primary_key=("data_date", "sensor_id"),
        max_dead_letter_ratio=ratio,
    )  # fmt: skip

    @dg.asset(partitions_def=daily, io_manager_key="postgres_io_manager", metadata=spec.metadata())
    def noisy(context: dg.AssetExecutionContext) -> PartitionRecords:
        rows = [{"sensor_id": i, "celsius": "x" if i < 4 else i} for i in range(10)]
        return {context.partition_key: rows}

    result = run(noisy, resources, partition_key=DAY)

    assert result.success is succeeds
    if succeeds:
        [mat] = result.asset_materializations_for_node("noisy")
        assert (mat.metadata["written"].value, mat.metadata["dead_lettered"].value) == (6, 4)
    else:
        assert "circuit breaker open: 4 of 10 records (40.0%)" in "".join(chain_of(result))
