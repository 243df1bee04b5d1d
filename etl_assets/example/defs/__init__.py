"""The example's loads declared in YAML (``PostgresLoadComponent``), one folder each."""
