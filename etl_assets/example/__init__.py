"""The example code location: sample log data, its assets, schedule and ``etl-assets-dev``.

Everything outside this package is the library; this is what ``dagster dev`` loads to
show it working (workspace.yaml points at ``etl_assets.example.definitions``).
"""
