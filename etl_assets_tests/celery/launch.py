"""A run in a process of its own, as the daemon's run launcher starts one: range or re-execution.

``python -m etl_assets_tests.celery.launch FIRST LAST`` runs the range FIRST..LAST of
``visits_range``; ``python -m etl_assets_tests.celery.launch --from-failure RUN_ID``
re-executes a failed run. The instance is ``$DAGSTER_HOME``'s; the last line printed is
``RUN_ID SUCCESS``. (Two runs in threads of one process deadlock in Dagster's logging
set-up: a process per run is also what production does.)
"""

from __future__ import annotations

import sys

import dagster as dg

from etl_assets_tests.celery import location


def main(argv: list[str]) -> int:
    job = dg.reconstructable(location.visits_range)
    with dg.DagsterInstance.get() as instance:
        if argv[0] == "--from-failure":
            options = dg.ReexecutionOptions.from_failure(argv[1], instance)
            parent = instance.get_run_by_id(argv[1])
            assert parent is not None, argv[1]
            # as the UI's re-execution does: the run's tags (its partition range) copied
            tags = {k: v for k, v in parent.tags.items() if k.startswith("dagster/asset_partition")}
            result = dg.execute_job(job, instance, tags=tags, reexecution_options=options)
        else:
            tags = {
                "dagster/asset_partition_range_start": argv[0],
                "dagster/asset_partition_range_end": argv[1],
            }
            result = dg.execute_job(job, instance, tags=tags)
        print(result.run_id, result.success)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
