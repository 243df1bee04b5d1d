"""What an asset may hand over besides records: DataFrames and Arrow, as Arrow batches.

A ``pandas.DataFrame`` iterated as records yields its column NAMES: a 1,000-row frame
became 3 dead-lettered "records" and a successful run. So every output is classified
before a row moves: a record stream (dicts, pydantic models), a columnar source
(``pandas.DataFrame``, ``polars.DataFrame`` / ``LazyFrame``, ``pyarrow.Table`` /
``RecordBatch``, or an iterator of them), or a refusal that names what to return.

Columnar sources become ``pyarrow.RecordBatch`` es of at most ``batch_size`` rows, one
chunk at a time (an iterator of frames is never collected whole), so memory is bounded
by the batch as it is for records. pyarrow, pandas and polars are optional extras
(``etl_assets[arrow]``, ``[pandas]``, ``[polars]``); detection never imports them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etl_assets.batch_bytes import ARROW_COPIES, DEFAULT_BATCH_BYTES, split_by_bytes
from etl_assets.errors import ConfigurationError
from etl_assets.postgres.conversions import invalid_text

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "INVALID_TEXT_COLUMN",
    "RecordSource",
    "arrow_batches",
    "classify_output",
    "is_frame",
    "require_pyarrow",
    "split_by_partition",
]

_FRAMES = {
    "pandas": ("DataFrame",),
    "polars": ("DataFrame", "LazyFrame"),
    "pyarrow": ("Table", "RecordBatch", "RecordBatchReader"),
}
# Column-like or array-like objects: iterating them yields values, never records.
_NOT_RECORDS = {
    "pandas": ("Series", "Index"),
    "polars": ("Series",),
    "pyarrow": ("Array", "ChunkedArray"),
    "numpy": ("ndarray",),
}

INVALID_TEXT_COLUMN = "__etl_assets_invalid_text__"
"""Added to a frame whose text Arrow cannot hold: the reason per row, null for good rows."""

RecordSource = Iterable[Any]
"""Records or columnar chunks, as an asset returned them for one partition."""


def _instance_of(obj: Any, kinds: Mapping[str, tuple[str, ...]]) -> str | None:
    """``"pandas.DataFrame"`` if ``obj`` is one of ``kinds`` (only loaded modules are asked)."""
    for module_name, names in kinds.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and isinstance(obj, cls):
                return f"{module_name}.{name}"
    return None


def is_frame(obj: Any) -> bool:
    return _instance_of(obj, _FRAMES) is not None


def classify_output(obj: Any, where: str) -> RecordSource:
    """``obj`` as a source the loader can account for row by row, or a clear refusal.

    A lazy iterator is peeked at (its first item put back) so that an iterator of
    DataFrames is recognized before any of it is loaded.
    """
    if is_frame(obj):
        return _FrameChunks(iter([obj]))
    kind = _instance_of(obj, _NOT_RECORDS)
    if kind is not None:
        raise ConfigurationError(
            f"{where}: got a {kind}, which iterates as values, not records; return a "
            "DataFrame, an Arrow table, or a list/iterator of dicts or pydantic models"
        )
    if obj is None or isinstance(obj, str | bytes | Mapping) or not isinstance(obj, Iterable):
        raise ConfigurationError(
            f"{where}: expected a DataFrame, an Arrow table, or a list or an iterator of "
            f"records (pydantic models or dicts), got {type(obj).__name__}"
        )
    iterator = iter(obj)
    try:
        first = next(iterator)
    except StopIteration:
        return []
    if is_frame(first):
        return _FrameChunks(itertools.chain([first], iterator))
    return itertools.chain([first], iterator) if iterator is obj else obj


class _FrameChunks:
    """An iterator of DataFrames / Arrow chunks, marked as such for the loader."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[Any]:
        return self._chunks


def split_by_partition(
    frame: Any, column: str, keys: Sequence[str], where: str
) -> dict[str, pa.Table]:
    """One frame covering several days, as an Arrow table per partition key, by ``column``.

    Every row must land in exactly one partition of the run: a row whose date is null or
    outside the run is refused (with how many), never dropped.
    """
    pa = require_pyarrow("a DataFrame output")
    import pyarrow.compute as pc

    table = _as_table(pa, frame)
    if column not in table.column_names:
        raise ConfigurationError(
            f"{where}: it has no partition column {column!r} to split it by; add the column "
            "(the data date of each row) or return {partition_key: frame}"
        )
    try:
        days = pc.cast(table.column(column), pa.date32(), safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigurationError(f"{where}: its column {column!r} is not a date ({exc})") from None
    parts = {}
    for key in keys:
        mask = pc.fill_null(
            pc.equal(days, pa.scalar(dt.date.fromisoformat(key), pa.date32())), False
        )
        parts[key] = table.filter(mask)
    stray = table.num_rows - sum(part.num_rows for part in parts.values())
    if stray:
        raise ConfigurationError(
            f"{where}: {stray} of its {table.num_rows} rows have a {column!r} that is null or "
            f"outside the run's partitions ({keys[0]} .. {keys[-1]}); nothing was loaded"
        )
    return parts


def is_columnar(source: RecordSource) -> bool:
    return isinstance(source, _FrameChunks) or is_frame(source)


def require_pyarrow(what: str) -> Any:
    try:
        import pyarrow
    except ImportError:  # the optional extra is missing: say which one
        raise ConfigurationError(
            f"{what} needs pyarrow: pip install 'etl_assets[arrow]' (or [pandas], [polars])"
        ) from None
    return pyarrow


def arrow_batches(
    source: RecordSource, batch_size: int, batch_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[pa.RecordBatch]:
    """The columnar ``source`` as record batches of at most ``batch_size`` rows and about
    ``batch_bytes / ARROW_COPIES`` Arrow bytes (``etl_assets.batch_bytes``)."""
    pa = require_pyarrow("a DataFrame output")
    chunks: Iterable[Any] = source if isinstance(source, _FrameChunks) else [source]
    for chunk in chunks:
        if not is_frame(chunk):
            raise ConfigurationError(
                f"an iterator of DataFrames yielded a {type(chunk).__name__}; every chunk "
                "must be a DataFrame or an Arrow table/batch"
            )
        for batch in _batches_of(pa, chunk, batch_size):
            if batch.num_rows:
                yield from split_by_bytes(batch, batch_bytes // ARROW_COPIES)


def _batches_of(pa: Any, frame: Any, batch_size: int) -> Iterator[pa.RecordBatch]:
    kind = _instance_of(frame, _FRAMES)
    if kind == "pandas.DataFrame":
        # preserve_index=False: the index is not a column of the model (reset_index() it
        # into one if it is). NaN in float columns becomes null (pandas' missing value).
        table = _from_pandas(pa, frame)
    elif kind == "polars.LazyFrame":  # streamed by polars' engine where it can
        if hasattr(frame, "collect_batches"):
            for chunk in frame.collect_batches(chunk_size=batch_size):
                yield from chunk.to_arrow().to_batches(max_chunksize=batch_size)
            return
        table = frame.collect().to_arrow()
    elif kind == "polars.DataFrame":
        table = frame.to_arrow()
    elif kind == "pyarrow.RecordBatchReader":
        for batch in frame:
            yield from _split(batch, batch_size)
        return
    elif kind == "pyarrow.RecordBatch":
        yield from _split(frame, batch_size)
        return
    else:
        table = frame
    yield from table.to_batches(max_chunksize=batch_size)


def _from_pandas(pa: Any, frame: Any) -> pa.Table:
    """pandas to Arrow, or a refusal naming the column Arrow cannot type (mixed objects)."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except UnicodeEncodeError:  # a lone surrogate: the rows, not the frame, are bad
        return _from_pandas(pa, _invalid_text_marked(frame))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        culprit = "a column"
        for name in frame.columns:
            try:
                pa.array(frame[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                culprit = f"column {name!r}"
                break
        raise ConfigurationError(
            f"the DataFrame cannot be typed: {culprit} holds values Arrow cannot put in one "
            f"type ({str(exc).splitlines()[0]}); convert it (astype) or return the rows as "
            "records (df.to_dict('records')) so bad values are dead-lettered one by one"
        ) from None


def _invalid_text_marked(frame: Any) -> Any:
    """A copy of ``frame`` whose invalid text is escaped and its rows marked for dead letters.

    Text that is not valid Unicode (a lone surrogate, as ``surrogateescape`` decodes
    undecodable bytes) cannot become Arrow, which made one bad string fail the whole
    partition. Such a value is replaced by its escaped form (``a\\udc80b``), readable
    in the dead letter's payload, and the row gets the reason in
    :data:`INVALID_TEXT_COLUMN`: the shaper dead-letters it, so the escaped text is
    never stored. Only a frame that failed to convert pays for this scan.
    """
    frame = frame.copy(deep=False)
    reasons: list[str | None] = [None] * len(frame)
    for name in frame.columns:
        if frame[name].dtype.kind != "O" and str(frame[name].dtype) != "string":
            continue
        values = list(frame[name])
        changed = False
        for i, value in enumerate(values):
            why = invalid_text([str(name)], [value])
            if why is not None:
                reasons[i] = reasons[i] or why
                values[i] = value.encode("utf-8", "backslashreplace").decode("utf-8")
                changed = True
        if changed:
            frame[name] = values
    frame[INVALID_TEXT_COLUMN] = reasons
    return frame


def _as_table(pa: Any, frame: Any) -> pa.Table:
    """A whole frame as one Arrow table (to split it by day, it is needed whole anyway)."""
    kind = _instance_of(frame, _FRAMES)
    if kind == "pandas.DataFrame":
        return _from_pandas(pa, frame)
    if kind == "polars.LazyFrame":
        return frame.collect().to_arrow()
    if kind == "polars.DataFrame":
        return frame.to_arrow()
    if kind == "pyarrow.RecordBatch":
        return pa.Table.from_batches([frame])
    if kind == "pyarrow.RecordBatchReader":
        return frame.read_all()
    return frame


def _split(batch: pa.RecordBatch, batch_size: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, batch_size):
        yield batch.slice(offset, batch_size)
