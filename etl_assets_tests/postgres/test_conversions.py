"""The conversion table as pure logic (no database): spellings, kinds, verdicts, reasons."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Literal

import pydantic
import pytest

from etl_assets.errors import ConfigurationError
from etl_assets.postgres.conversions import (
    RULES,
    Family,
    FieldKind,
    Verdict,
    column_type,
    conversion_plan,
    field_kind,
    invalid_text,
    value_check,
    verdict,
)

D = decimal.Decimal
NAIVE = dt.datetime(2024, 3, 1, 12, 0)
AWARE = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))


@pytest.mark.parametrize(
    ("spelling", "family", "length", "precision", "scale"),
    [
        ("bigint", Family.BIGINT, None, None, None),
        ("smallint", Family.SMALLINT, None, None, None),
        ("double precision", Family.DOUBLE, None, None, None),
        ("numeric", Family.NUMERIC, None, None, None),
        ("numeric(10,2)", Family.NUMERIC_PS, None, 10, 2),
        ("numeric(6)", Family.NUMERIC_PS, None, 6, 0),
        ("character varying(3)", Family.VARCHAR_N, 3, None, None),
        ("character varying", Family.VARCHAR, None, None, None),
        ("character(1)", Family.CHAR_N, 1, None, None),
        ("timestamp with time zone", Family.TIMESTAMPTZ, None, None, None),
        ("timestamptz", Family.TIMESTAMPTZ, None, None, None),
        ("jsonb", Family.JSON, None, None, None),
        ("inet", Family.OTHER, None, None, None),
        ("integer[]", Family.OTHER, None, None, None),
    ],
)
def test_format_type_spellings_are_parsed(
    spelling: str, family: Family, length: int | None, precision: int | None, scale: int | None
) -> None:
    """Each format_type spelling maps to its family with its length, precision and scale."""
    col = column_type(spelling)
    assert (col.family, col.length, col.precision, col.scale) == (family, length, precision, scale)


class Kinds(pydantic.BaseModel):
    flag: bool
    qty: int
    price: float | None
    amount: D
    name: Literal["a", "b"]
    at: dt.datetime
    aware: pydantic.AwareDatetime
    naive: pydantic.NaiveDatetime | None = None
    day: dt.date


def test_field_kinds_follow_the_annotation() -> None:
    """bool is not int, datetime is not date, Optional and Literal are unwrapped."""
    kinds = {name: field_kind(f.annotation) for name, f in Kinds.model_fields.items()}
    assert kinds == {
        "flag": FieldKind.BOOL,
        "qty": FieldKind.INT,
        "price": FieldKind.FLOAT,
        "amount": FieldKind.DECIMAL,
        "name": FieldKind.STR,
        "at": FieldKind.DATETIME,
        "aware": FieldKind.AWARE_DATETIME,
        "naive": FieldKind.NAIVE_DATETIME,
        "day": FieldKind.DATE,
    }


# Every checked row of the table, with a value that fits and one that would change.
CHECKED = [
    (FieldKind.INT, "smallint", 7, 40_000),
    (FieldKind.INT, "integer", 7, 2**40),
    (FieldKind.INT, "real", 2**24, 2**24 + 1),
    (FieldKind.INT, "double precision", 2**53, 2**53 + 1),
    (FieldKind.INT, "numeric(10,2)", 12_345_678, 123_456_789),
    (FieldKind.FLOAT, "numeric(10,2)", 0.1, 1.005),
    (FieldKind.DECIMAL, "numeric(10,2)", D("1.50"), D("1.005")),
    (FieldKind.STR, "character varying(3)", "abc", "abc  "),
    (FieldKind.STR, "character(3)", "abc", "ab"),
    (FieldKind.DATETIME, "timestamp with time zone", AWARE, NAIVE),
    (FieldKind.DATETIME, "timestamp without time zone", NAIVE, AWARE),
    (FieldKind.ANY, "smallint", 7, 40_000),
    (FieldKind.ANY, "integer", 5.0, 5.5),
    (FieldKind.ANY, "bigint", 5, 5.25),
    (FieldKind.ANY, "real", 0.5, 0.1),
    (FieldKind.ANY, "double precision", D("0.1"), D("1.23456789012345678901")),
    (FieldKind.ANY, "numeric(10,2)", D("1.5"), D("1.005")),
    (FieldKind.ANY, "character varying(3)", "ab", "abcd"),
    (FieldKind.ANY, "character(2)", "US", "U"),
    (FieldKind.ANY, "timestamp with time zone", AWARE, NAIVE),
    (FieldKind.ANY, "timestamp without time zone", NAIVE, AWARE),
    (FieldKind.ANY, "date", dt.datetime(2024, 3, 1), NAIVE),
]


@pytest.mark.parametrize(("kind", "spelling", "fits", "changes"), CHECKED)
def test_checked_pairs_pass_what_fits_and_name_what_would_change(
    kind: FieldKind, spelling: str, fits: object, changes: object
) -> None:
    """A checked pair lets an exact value through and gives the reason for one that would change."""
    check = value_check(kind, "col", column_type(spelling))
    assert check is not None
    assert check.reason(fits) is None
    assert check.reason(None) is None
    why = check.reason(changes)
    assert why is not None
    assert why.startswith("col: ")


def test_every_checked_row_of_the_table_is_exercised() -> None:
    """The list above covers each checked pair of RULES (the README's table)."""
    covered = {(k, column_type(s).family) for k, s, _, _ in CHECKED}
    checked = {pair for pair, rule in RULES.items() if rule.verdict is Verdict.CHECKED}
    assert checked == covered


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.005, "col: 1.005 would be stored as 1.00 in numeric(10,2)"),
        (D("1.005"), "col: 1.005 would be stored as 1.01 in numeric(10,2)"),
        (D("123456789"), "col: 123456789 has too many digits for numeric(10,2)"),
    ],
)
def test_numeric_reasons_say_what_would_be_stored(value: object, reason: str) -> None:
    """The reason shows the value Postgres would store (it rounds half away from zero)."""
    check = value_check(FieldKind.ANY, "col", column_type("numeric(10,2)"))
    assert check is not None
    assert check.reason(value) == reason


def test_trailing_spaces_the_server_would_cut_are_named() -> None:
    """varchar(n) silently cuts excess spaces; the reason says so."""
    check = value_check(FieldKind.STR, "code", column_type("character varying(3)"))
    assert check is not None
    assert check.reason("abc  ") == (
        "code: 5 characters do not fit character varying(3) (the server would cut its "
        "trailing spaces)"
    )


class Qty(pydantic.BaseModel):
    qty: float
    name: str
    at: pydantic.NaiveDatetime


def test_a_refused_pair_names_column_types_alter_and_model_change() -> None:
    """Each refused column is named with both types, what it loses, the ALTER and the model fix."""
    with pytest.raises(ConfigurationError) as caught:
        conversion_plan(
            Qty,
            {"qty": "bigint", "name": "text", "at": "timestamp with time zone"},
            ["qty", "name", "at"],
            '"s"."t"',
        )
    message = str(caught.value)
    assert (
        "Column 'qty' is bigint but the model's field 'qty' is float: storing it would lose "
        'its fraction (5.25 would be stored as 5). Widen the column (ALTER TABLE "s"."t" '
        'ALTER COLUMN "qty" TYPE double precision) or declare the field int' in message
    )
    assert "Column 'at' is timestamp with time zone but the model's field 'at' is " in message
    assert 'ALTER COLUMN "at" TYPE timestamp without time zone' in message
    assert "'name'" not in message


class Exact(pydantic.BaseModel):
    qty: int
    name: str
    price: float
    code: str = pydantic.Field(max_length=3)
    amount: D = pydantic.Field(max_digits=10, decimal_places=2)


def test_exact_pairs_and_fields_constrained_to_fit_get_no_check() -> None:
    """int->bigint, str->text, float->double cost nothing; so does a field whose own
    max_length or max_digits/decimal_places already fit the column."""
    plan = conversion_plan(
        Exact,
        {
            "qty": "bigint",
            "name": "text",
            "price": "double precision",
            "code": "character varying(3)",
            "amount": "numeric(10,2)",
        },
        ["qty", "name", "price", "code", "amount"],
        '"t"',
    )
    assert plan.checks == ()


def test_unlisted_pairs_are_not_judged_here() -> None:
    """A column of another kind (schema drift) is not this table's verdict to give."""
    assert verdict(FieldKind.INT, column_type("text")).verdict is Verdict.EXACT
    assert verdict(FieldKind.STR, column_type("jsonb")).verdict is Verdict.EXACT


def test_invalid_text_names_the_column_and_escapes_the_code_point() -> None:
    """A lone surrogate is reported readable, with its column and position."""
    why = invalid_text(["id", "name"], [1, "a\udc80b"])
    assert why is not None
    assert why.startswith("name: text is not valid Unicode (\\udc80 at position 1")
    assert invalid_text(["id", "name"], [1, "ok"]) is None


AWARE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
ALL_EXACT_CASES = [
    ("bigint", [1, 2, 3], True),
    ("bigint", [1, 2**63], False),  # out of range: the per-value check names it
    ("bigint", [1, 2.5], False),
    ("bigint", [1, None], False),  # value by value (None is fine there)
    ("smallint", [1, 40_000], False),
    ("double precision", [1.5, None], True),
    ("double precision", [1.5, 2**60 + 1], False),
    ("timestamp with time zone", [AWARE], True),
    (
        "timestamp with time zone",
        [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1)],
        False,
    ),
]


@pytest.mark.parametrize(("spelling", "values", "exact"), ALL_EXACT_CASES)
def test_all_exact_passes_a_clean_column_at_once_and_never_a_lossy_one(
    spelling: str, values: list[object], exact: bool
) -> None:
    """The C-level column pass accepts only columns whose every value is stored as it is."""
    check = value_check(FieldKind.ANY, "c", column_type(spelling))
    assert check is not None
    assert check.all_exact(values) is exact
    if not exact:
        assert any(check.problem(v) for v in values) or None in values
