"""classify(): by exception class and SQLSTATE, never by message text."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pgexc
import pytest
from asyncpg.exceptions import _base as pgbase

from etl_assets.errors import (
    ConfigurationError,
    FatalError,
    LoginRefusedError,
    PermissionDeniedError,
    RecordError,
    RetryableError,
    classify,
)


@pytest.mark.parametrize(
    "exc",
    [
        pgexc.ConnectionDoesNotExistError("gone"),  # 08003
        pgexc.AdminShutdownError("bye"),  # 57P01
        pgexc.TooManyConnectionsError("full"),  # 53300
        pgexc.SerializationError("retry"),  # 40001
        pgexc.DeadlockDetectedError("deadlock"),  # 40P01
        pgexc.QueryCanceledError("statement timeout"),  # 57014
        pgbase.InterfaceError("connection is closed"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ],
)
def test_transient_errors_are_retryable(exc: BaseException) -> None:
    """Connection loss, shutdown, resources, serialization and timeouts are retried."""
    assert isinstance(classify(exc), RetryableError)


@pytest.mark.parametrize(
    ("exc", "sqlstate"),
    [
        (pgexc.CheckViolationError("check"), "23514"),
        (pgexc.NotNullViolationError("null"), "23502"),
        (pgexc.UniqueViolationError("dup"), "23505"),
        (pgexc.CharacterNotInRepertoireError("nul"), "22021"),
        (pgexc.NumericValueOutOfRangeError("big"), "22003"),
    ],
)
def test_data_errors_are_record_errors_with_their_sqlstate(
    exc: BaseException, sqlstate: str
) -> None:
    """Classes 22 and 23 belong to a record: isolate it, do not retry."""
    error = classify(exc)
    assert isinstance(error, RecordError)
    assert error.sqlstate == sqlstate


def test_client_side_encoding_error_is_a_record_error() -> None:
    """asyncpg failing to encode a value is the record's fault too."""
    assert isinstance(classify(pgbase.DataError("invalid input for query argument")), RecordError)


@pytest.mark.parametrize(
    "exc",
    [
        pgexc.UndefinedColumnError("no such column"),  # 42703: schema, not data
        pgexc.UndefinedTableError("no such table"),
        pgexc.DatabaseDroppedError("dropped"),  # 57P04: waiting will not help
        RuntimeError("a bug"),
    ],
)
def test_schema_and_unknown_errors_are_fatal(exc: BaseException) -> None:
    """Unknown errors are fatal, never silently retried or bisected row by row."""
    error = classify(exc)
    assert isinstance(error, FatalError)
    assert not isinstance(error, RetryableError | RecordError)


def test_bad_password_is_a_configuration_error_that_names_the_fix() -> None:
    """Authentication failures say to check the DSN credentials."""
    error = classify(pgexc.InvalidPasswordError("password authentication failed"))
    assert isinstance(error, ConfigurationError)
    assert "check the DSN" in str(error)


def test_sqlstate_decides_not_the_message() -> None:
    """A localized or misleading message does not change the classification."""
    error = classify(asyncpg.PostgresError.new({"C": "40001", "M": "connection refused"}))
    assert isinstance(error, RetryableError)


def test_a_connection_left_in_a_broken_protocol_state_is_retried() -> None:
    """Regression (soak run, backends killed every 5-50 ms): asyncpg's InternalClientError
    escaped classification and crashed the load unclassified. It is transient: a fresh
    connection serves the retry, and ``retry.connection`` terminates the broken one."""
    from asyncpg.exceptions._base import InternalClientError

    from etl_assets.postgres.retry import DRIVER_ERRORS

    exc = InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    assert isinstance(exc, DRIVER_ERRORS)
    assert isinstance(classify(exc), RetryableError)


def _pooler(message: str, severity: str = "FATAL") -> asyncpg.PostgresError:
    """What PgBouncer sends: SQLSTATE 08P01 and one of its fixed English messages."""
    return asyncpg.PostgresError.new({"S": severity, "C": "08P01", "M": message})


@pytest.mark.parametrize(
    "message",
    ["password authentication failed", "no such user: etl", "SASL authentication failed"],
)
def test_a_poolers_login_refusal_is_fatal_though_its_sqlstate_says_retry(message: str) -> None:
    """PgBouncer's 08P01 login refusals are LoginRefusedError, never retried."""
    error = classify(_pooler(message))
    assert isinstance(error, LoginRefusedError)
    assert error.sqlstate == "08P01"


@pytest.mark.parametrize("message", ["query_wait_timeout", "server login has been failing"])
def test_a_poolers_other_08P01_stays_transient(message: str) -> None:
    """A pooler waiting or its server down is still retried."""
    assert isinstance(classify(_pooler(message)), RetryableError)


def test_insufficient_privilege_is_a_permission_error_that_points_at_the_grants() -> None:
    """An undiagnosed 42501 is fatal and says where the GRANTs are."""
    error = classify(pgexc.InsufficientPrivilegeError("permission denied for schema etl"))
    assert isinstance(error, PermissionDeniedError)
    assert "`etl-assets-dead-letters grants ROLE` prints the GRANTs" in str(error)
