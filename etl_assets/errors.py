"""The error model: what may be retried, what is one bad record, what must stop the run.

Every exception that crosses the Postgres layer is mapped here, in ONE place, by class
and SQLSTATE (never by message text, which Postgres localizes). Three outcomes:

* ``RetryableError``: transient (connection lost, server restarting, out of resources,
  serialization failure, statement timeout). The batch is retried, bounded.
* ``RecordError``: the data of one or more records is unacceptable (SQLSTATE classes 22,
  23 and 54, or asyncpg failing to encode a value). Retrying cannot help; the batch is
  bisected to find the bad rows, which are dead-lettered.
* ``FatalError``: anything else. Unknown errors are fatal: silently retrying a bug or
  isolating a schema mismatch record by record would hide an outage.
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pgexc
from asyncpg.exceptions import _base as pgbase

__all__ = [
    "ENCODE_ERRORS",
    "CircuitBreakerOpenError",
    "ConfigurationError",
    "EtlError",
    "FatalError",
    "LeaseLostError",
    "LoadIntegrityError",
    "LoginRefusedError",
    "PermissionDeniedError",
    "PoolExhaustedError",
    "PublishBlockedError",
    "PublishRefusedError",
    "RecordError",
    "RetryableError",
    "SchemaChangedError",
    "StatementTimeoutError",
    "UnencodableValueError",
    "classify",
]

# SQLSTATE classes and codes that are transient by nature.
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})  # connection, resources, operator
_RETRYABLE_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "58000",  # system_error (I/O hiccup on the server)
    }
)
# 57P04 database_dropped is in class 57 but will never heal by waiting.
_FATAL_SQLSTATES = frozenset({"57P04"})
# Data exceptions and integrity violations: caused by a record's values.
# 22 data exception, 23 integrity violation, 54 program limit exceeded: a value the
# server cannot store (54000: a jsonb string over 256 MB, a tsvector over 1 MB). The
# batch is bisected, so only a row that fails alone is dead-lettered; a limit every row
# hits (too many columns) dead-letters them all and trips the breaker: loud, not hidden.
_RECORD_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# A pooler refuses a login with a SQLSTATE of its own: PgBouncer sends 08P01
# (protocol_violation, class 08 = "retry") with one of these messages. They are the
# pooler's fixed English texts (PgBouncer does not localize), so they are matched as
# what the pooler said, where the server's own refusals (28000/28P01) go by SQLSTATE.
POOLER_LOGIN_REFUSALS = (
    "password authentication failed",
    "no such user",
    "SASL authentication failed",
    "SCRAM authentication failed",
    "cannot do SCRAM authentication",
    '"trust" authentication failed',
    "certificate authentication failed",
    "PAM authentication failed",
    "unix socket login rejected",
    "not allowed",
    "server login failed: wrong password type",
)
POOLER_NO_DATABASE = "no such database"  # PgBouncer's 08P01 for a name it does not serve


# What asyncpg's encoders raise for a value they cannot encode into its column during a
# COPY (a query's arguments get them wrapped as DataError; COPY's rows do not): a lone
# surrogate (UnicodeEncodeError), an int out of the column's range (OverflowError), a
# value of another type (TypeError, or AttributeError where the encoder calls a method of
# the type it expects: a str in a date column has no ``toordinal``). Caught around the
# COPY only, they are record errors.
ENCODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    ArithmeticError,
    AttributeError,
)


class EtlError(Exception):
    """Base of every error this package raises on purpose."""

    sqlstate: str | None = None

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class RetryableError(EtlError):
    """Transient: the same work may succeed if tried again after a pause."""


class RecordError(EtlError):
    """The data of a record is unacceptable to the target; dead-letter it, do not retry."""

    detail: str | None = None

    def __init__(
        self, message: str, *, sqlstate: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.detail = detail


class UnencodableValueError(RecordError):
    """A value its column's encoding cannot express (a set or NaN into jsonb): a dead letter."""


class FatalError(EtlError):
    """Stops the load and fails the run: retrying or isolating records cannot help."""


class ConfigurationError(FatalError):
    """The user's configuration is wrong; the message says what to change."""


class LeaseLostError(FatalError):
    """A running load's lease was taken over as dead; the load stops, nothing published."""


class LoginRefusedError(ConfigurationError):
    """The server or a pooler refused the user or its password: fatal at once."""


class PoolExhaustedError(ConfigurationError):
    """A pooler could not give a step the server connections its pool may use."""


class PermissionDeniedError(ConfigurationError):
    """The role lacks a privilege (42501); the message names the object and the GRANT."""


class CircuitBreakerOpenError(FatalError):
    """Too many records failed: a systemic problem, not a few bad records."""


class LoadIntegrityError(FatalError):
    """An audit found the numbers do not add up; nothing was published."""


class PublishRefusedError(FatalError):
    """The server refused to make the staged partition visible; nothing was published."""


class PublishBlockedError(FatalError):
    """A publish waited its whole lock budget behind other sessions; nothing published."""


class SchemaChangedError(FatalError):
    """The target changed while a load ran in a way its staged rows cannot follow."""


class StatementTimeoutError(FatalError):
    """A statement ran into the session's ``statement_timeout``: retrying repeats it."""


def classify(exc: BaseException) -> EtlError:
    """Map an exception from asyncpg or the OS to one of the three outcomes.

    The returned error carries the SQLSTATE (when there is one) and a message without
    connection secrets; callers raise it ``from exc`` so the original stays visible.
    """
    if isinstance(exc, EtlError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        return _classify_postgres(exc)
    if isinstance(exc, pgbase.DataError):
        # asyncpg could not encode a Python value for the column type (client side).
        return RecordError(f"value cannot be encoded: {exc}", sqlstate=None)
    if isinstance(exc, pgbase.ClientConfigurationError | pgbase.UnsupportedClientFeatureError):
        return ConfigurationError(f"asyncpg configuration: {exc}")
    if isinstance(exc, pgbase.InternalClientError):
        return RetryableError(f"connection left in a broken state: {exc}")
    if isinstance(exc, pgbase.InterfaceError):
        # "connection is closed" and friends: the connection went away under us.
        return RetryableError(f"connection unusable: {exc}")
    if isinstance(exc, TimeoutError | OSError):
        # ConnectionRefusedError, ConnectionResetError, socket timeouts, DNS failures.
        return RetryableError(f"network: {type(exc).__name__}: {exc}")
    return FatalError(f"unexpected {type(exc).__name__}: {exc}")


def _classify_postgres(exc: asyncpg.PostgresError) -> EtlError:
    sqlstate: str = exc.sqlstate or ""
    message = f"{type(exc).__name__} [{sqlstate}]: {exc}"
    if isinstance(exc, pgexc.InvalidAuthorizationSpecificationError | pgexc.InvalidPasswordError):
        return LoginRefusedError(
            f"PostgreSQL refused the credentials [{sqlstate}]; check the DSN's user and password",
            sqlstate=sqlstate,
        )
    if sqlstate == "08P01" and _pooler_said(exc, POOLER_LOGIN_REFUSALS):
        return LoginRefusedError(
            f"the connection pooler refused the login [{sqlstate}: {exc}]; check the DSN's "
            "user and password, and the pooler's auth_file or auth_query",
            sqlstate=sqlstate,
        )
    if sqlstate == "08P01" and _pooler_said(exc, (POOLER_NO_DATABASE,)):
        return ConfigurationError(
            f"the connection pooler does not serve that database [{sqlstate}: {exc}]; fix "
            "the database name in the DSN, or the pooler's [databases] section",
            sqlstate=sqlstate,
        )
    if sqlstate == "42501":  # insufficient_privilege, not diagnosed where it arose
        return PermissionDeniedError(
            f"{message}: the role lacks a privilege on the object named; `etl-assets-dead-"
            "letters grants ROLE` prints the GRANTs of the documented layout (README, "
            "Production PostgreSQL: what each operation needs)",
            sqlstate=sqlstate,
        )
    if sqlstate in _FATAL_SQLSTATES:
        return FatalError(message, sqlstate=sqlstate)
    if sqlstate in _RETRYABLE_SQLSTATES or sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES:
        return RetryableError(message, sqlstate=sqlstate)
    if isinstance(exc, pgexc.PostgresConnectionError):
        return RetryableError(message, sqlstate=sqlstate)
    if sqlstate[:2] in _RECORD_SQLSTATE_CLASSES:
        return RecordError(message, sqlstate=sqlstate, detail=getattr(exc, "detail", None))
    return FatalError(message, sqlstate=sqlstate)


def _pooler_said(exc: asyncpg.PostgresError, texts: tuple[str, ...]) -> bool:
    """A FATAL message from a pooler that begins with one of its fixed texts."""
    message = str(getattr(exc, "message", None) or exc)
    return getattr(exc, "severity", None) == "FATAL" and message.startswith(texts)
