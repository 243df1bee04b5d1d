"""The dead-letter queue as an asset: what could not be written, where, and why.

The table itself is written by the loads (in the same transaction as each batch); this
asset reads it and publishes the summary as metadata, so the Dagster UI shows the queue
next to the assets that feed it.
"""

from typing import Any

import dagster as dg

from etl_assets.postgres.dead_letters import DeadLetterSummary, summarize_dead_letters
from etl_assets.postgres.ledger import Ledger
from etl_assets.postgres.resource import PostgresResource

__all__ = ["dead_letter_queue", "summary_metadata"]


@dg.asset(
    group_name="dead_letters",
    kinds={"postgres"},
    pool="postgres",
    # The default ledger schema's table; each materialization names the one it read.
    metadata={"dagster/table_name": "etl.dead_letters"},
)
def dead_letter_queue(postgres: PostgresResource) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Dead letters per target, partition and error class, and the newest open ones.

    ``open`` counts letters of each partition's current load that nothing resolved yet.
    Fix and replay them with the ``replay_dead_letters`` job (or ``etl-assets-dead-letters``
    export / replay --fixes); ``discard`` resolves one by hand, with who and why.
    """
    ledger = Ledger(postgres.ledger_schema)

    summary = postgres.retried(lambda conn: summarize_dead_letters(conn, ledger))
    return dg.MaterializeResult(metadata=summary_metadata(summary, ledger))


def summary_metadata(summary: DeadLetterSummary, ledger: Ledger) -> dict[str, Any]:
    groups = [
        "| target | partition | error class | open | replayed | superseded | discarded |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {g.target} | {g.partition_key} | {g.error_class} | {g.open} | {g.replayed} "
            f"| {g.superseded} | {g.discarded} |"
            for g in summary.groups
        ),
    ]
    newest = [
        "| id | target | partition | record no. in the load (from 0) | error | payload |",
        "|---|---|---|---|---|---|",
        *(
            f"| {d.id} | {d.target} | {d.partition_key} | {d.record_no} | "
            f"{_cell(d.error_class + ': ' + d.error_message)} | {_code(d.payload_excerpt)} |"
            for d in summary.newest
        ),
    ]
    return {
        "open": summary.open,
        "replayed": summary.replayed,
        "superseded": summary.superseded,
        "discarded": summary.discarded,
        "pending": summary.pending,
        "dagster/row_count": summary.open,
        "table": ledger.dead_letters,
        "dagster/table_name": f"{ledger.schema}.dead_letters",
        "by_target_partition_error": dg.MetadataValue.md("\n".join(groups)),
        "newest_open": dg.MetadataValue.md("\n".join(newest)),
    }


def _cell(text: str) -> str:
    """Markdown table cell: no pipes or newlines from the data."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A payload as a code span: JSON's backslash escapes shown as they are, not eaten."""
    inner = _cell(text).replace("`", "'")
    return f"`{inner}`"
