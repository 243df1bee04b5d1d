"""A multi-partition run loads every partition; one partition's failure stays its own.

A backfill chunk (or a single-run range) hands the IO manager many partitions in one
step. Each is attempted: a source that raises, a breaker that trips or an integrity error
fails that partition alone. Only what makes every later partition fail the same way
stops the step at once: transient errors that outlived their retry budget (the server
is gone) and cancellations. Either way the partitions that published are reported to
Dagster one by one, so what Dagster records per partition is what the table holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from etl_assets.errors import RetryableError
from etl_assets.postgres.loader import LoadReport

__all__ = [
    "InFlight",
    "PartitionFailure",
    "PartitionOutcomes",
    "partitions_failed",
    "stops_the_run",
]

MESSAGE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class PartitionFailure:
    """A partition that did not publish, and why."""

    partition_key: str
    error: BaseException

    @property
    def reason(self) -> str:
        text = f"{type(self.error).__name__}: {self.error}"
        return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


@dataclass(frozen=True, slots=True)
class InFlight:
    """The partition being loaded, under which load id: what an interrupt may cut short.

    A stop (SIGTERM, a run terminated from the UI) can land after the publish committed
    and before its report is kept; the ledger then knows what this step does not, and
    this says where to ask.
    """

    partition_key: str
    load_id: str


@dataclass(slots=True)
class PartitionOutcomes:
    """What became of each partition of a step, in the order they were attempted."""

    reports: list[LoadReport] = field(default_factory=list)
    failures: list[PartitionFailure] = field(default_factory=list)
    in_flight: InFlight | None = None

    def published(self, report: LoadReport) -> None:
        self.reports.append(report)
        self.in_flight = None

    def failed(self, failure: PartitionFailure) -> None:
        self.failures.append(failure)
        self.in_flight = None

    @property
    def published_keys(self) -> list[str]:
        return [r.partition_key for r in self.reports]


def stops_the_run(error: Exception) -> bool:
    """True for a failure that every later partition would meet too.

    A transient error that outlived the retry budget means the server is unreachable:
    trying 30 more partitions would take 30 more budgets to say the same. (Cancellations
    and interrupts are not ``Exception``s: they never reach the per-partition handler.)
    """
    return isinstance(error, RetryableError)


def partitions_failed(asset: str, outcomes: PartitionOutcomes) -> dg.Failure:
    """The step's failure: each failed partition named with its reason."""
    failed = outcomes.failures
    lines = "\n".join(f"  {f.partition_key}: {f.reason}" for f in failed)
    published = outcomes.published_keys
    others = (
        f"the other {len(published)} published and are recorded with their checks"
        if published
        else "none published"
    )
    return dg.Failure(
        description=(
            f"asset {asset}: {len(failed)} of {len(failed) + len(published)} partition(s) "
            f"failed; {others}.\n{lines}\nFix the source of the failed partition(s) and "
            "materialize them again (a re-execution of this run loads only those)."
        ),
        metadata={
            "failed_partitions": dg.MetadataValue.json({f.partition_key: f.reason for f in failed}),
            "published_partitions": dg.MetadataValue.json(published),
        },
    )
