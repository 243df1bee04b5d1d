"""The source of the YAML-declared ``shop_orders`` load: deterministic orders per data date."""

import datetime as dt
import decimal
import random
from collections.abc import Iterator

import pydantic

__all__ = ["ORDERS_PER_DAY", "Order", "read_orders"]

ORDERS_PER_DAY = 5


class Order(pydantic.BaseModel):
    """One order of a data date."""

    order_id: int = pydantic.Field(ge=1)
    customer: str = pydantic.Field(min_length=1)
    amount: decimal.Decimal = pydantic.Field(max_digits=10, decimal_places=2)


def read_orders(day: dt.date) -> Iterator[dict[str, object]]:
    """The day's orders, seeded by the date (never the clock), so a rerun is identical."""
    rng = random.Random(day.toordinal())
    for order_id in range(1, ORDERS_PER_DAY + 1):
        cents = rng.randrange(100, 100_000)
        yield {
            "order_id": order_id,
            "customer": rng.choice(["ada", "grace", "linus", "margaret"]),
            "amount": decimal.Decimal(cents).scaleb(-2),
        }
