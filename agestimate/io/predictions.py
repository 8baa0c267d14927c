"""Prediction rows and the files they go to: one row per face, one row with the reason for an
image without a face or with an error; CSV, JSON Lines or Parquet, resumable.

The rows are those of `ImageResult.summary`. The local `agestimate predict` and the Ray engine
(`agestimate.apps.distributed`) write them through the same `PredictionWriter`, so both give the
same files.

Resuming: when the output exists, `PredictionWriter` keeps its rows and `scored` holds the
`file` values already in it; the caller skips those sources. The key is the path as written in
the `file` column, so a rerun of the same command (same SOURCES, same working folder) skips
what is done; a file changed in place keeps its old row (delete the output to score again).
A run killed mid-write leaves at most a torn last line (CSV, JSON Lines) or an unfinished
temporary part (Parquet); both are dropped on resume, with the rows of the last image before
them, which may be incomplete, so no image is lost or duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from agestimate.errors import AgestimateError
from agestimate.io.atomic import atomic_path

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["file", "frame", "face", "track", "x1", "y1", "x2", "y2", "age", "age_low", "age_high",
                      "age_spread", "age_group", "gender", "gender_probability", "confidence", "detection_score",
                      "detection_method", "neighbours", "error"]
_INTEGER_COLUMNS = {"frame", "face", "track"}
_TEXT_COLUMNS = {"file", "age_group", "gender", "detection_method", "neighbours", "error"}
_ERROR_ROW_COLUMNS = ("file", "frame", "error")  # what `ImageResult.summary` gives for an image without a face
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
PARQUET_PART_ROWS = 10_000  # rows per Parquet part: at most this much work is redone after a crash
PARQUET_PART_SECONDS = 60.0  # ... or this many seconds of it, when scoring is slow


def prediction_schema():
    """The Arrow schema of prediction rows (Parquet and the Ray engine's tables); `neighbours` is JSON text."""
    import pyarrow as pa

    def kind(name):
        return pa.int64() if name in _INTEGER_COLUMNS else pa.string() if name in _TEXT_COLUMNS else pa.float64()

    return pa.schema([(name, kind(name)) for name in PREDICTION_COLUMNS])


def _flat(row: dict) -> dict:
    """A row with `neighbours` as JSON text, as CSV and Parquet hold it."""
    return {**row, "neighbours": json.dumps(row["neighbours"])} if "neighbours" in row else row


def rows_to_table(rows: list[dict]):
    """Prediction rows (`ImageResult.summary`) as an Arrow table with `prediction_schema()`."""
    import pyarrow as pa

    return pa.Table.from_pylist([{name: flat.get(name) for name in PREDICTION_COLUMNS} for flat in map(_flat, rows)],
                                schema=prediction_schema())


def table_rows(table) -> list[dict]:
    """The rows of an Arrow table of predictions as `ImageResult.summary` gives them: a face row
    with every face column, an error row with file, frame and error."""
    rows = []
    for row in table.to_pylist():
        if row["face"] is None:
            rows.append({name: row[name] for name in _ERROR_ROW_COLUMNS})
            continue
        neighbours = row.pop("neighbours")
        row.pop("error")
        rows.append(row if neighbours is None else {**row, "neighbours": json.loads(neighbours)})
    return rows


def check_output(out: str | Path | None) -> None:
    """Raise `ValueError` unless `out` is None (CSV on stdout) or ends in a supported suffix."""
    if out is not None and not str(out).endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"{out}: the output must end in {', '.join(OUTPUT_SUFFIXES)}")


class PredictionWriter:
    """Writes prediction rows to CSV (a file, or stdout when `out` is None), JSON Lines, or a
    Parquet dataset (a folder of `part-NNNNN.parquet` files, each written whole).

    An existing output is resumed: its rows are kept, `scored` is the set of their files.
    Give `write` whole images (every row of an image in one call).
    """

    def __init__(self, out: str | Path | None):
        check_output(out)
        self.out = None if out is None else Path(out)
        self.format = "csv" if out is None else self.out.suffix[1:]
        self.scored: set[str] = set()
        self._pending: list[dict] = []
        self._last_part = time.monotonic()
        if self.format == "parquet":
            self._parts = self._resume_parquet()
            return
        kept = self.out is not None and self.out.exists() and self._resume_lines()
        self._stream = sys.stdout if self.out is None else open(self.out, "a" if kept else "w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._stream, PREDICTION_COLUMNS) if self.format == "csv" else None
        if self._csv and not kept:
            self._csv.writeheader()

    # -- resuming ----------------------------------------------------------------------------
    def _resume_lines(self) -> bool:
        """Read an existing CSV or JSON Lines output; cut a torn tail and the last image's rows.
        True when something (rows, or a CSV header) is kept to append to."""
        data = self.out.read_bytes()
        if not data:
            return False
        text = data[: data.rfind(b"\n") + 1].decode("utf-8")
        lines = text.splitlines(keepends=True)
        if self.format == "csv":
            header = next(csv.reader(lines[:1]), [])
            if header != PREDICTION_COLUMNS:
                raise AgestimateError(f"{self.out}: not an agestimate predictions file (its header is {header[:4]}...); "
                                      "choose another output")
            files = [row[0] for row in csv.reader(lines[1:])]
            body = 1
        else:
            try:
                files = [json.loads(line)["file"] for line in lines]
            except (ValueError, KeyError, TypeError) as error:
                raise AgestimateError(f"{self.out}: not an agestimate predictions file ({error}); choose another output") from error
            body = 0
        keep = len(files)
        while keep and files[keep - 1] == files[-1]:  # the last image's rows may be incomplete
            keep -= 1
        kept = "".join(lines[: body + keep])
        if len(kept.encode("utf-8")) != len(data):
            with open(self.out, "r+b") as stream:
                stream.truncate(len(kept.encode("utf-8")))
        self.scored = set(files[:keep])
        return bool(body + keep)

    def _resume_parquet(self) -> int:
        import pyarrow.parquet as pq

        if self.out.exists() and not self.out.is_dir():
            raise AgestimateError(f"{self.out}: exists and is not a folder; Parquet output is a folder of parts, "
                                  "choose another output")
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):  # a part whose writing was interrupted
            stale.unlink()
        parts = sorted(self.out.glob("part-*.parquet"))
        for part in parts:
            try:
                self.scored.update(pq.read_table(part, columns=["file"]).column("file").to_pylist())
            except Exception as error:  # pyarrow raises several types for damaged files
                raise AgestimateError(f"{part}: not a readable predictions part ({error}); delete it to score its "
                                      "images again") from error
        return len(parts)

    # -- writing -----------------------------------------------------------------------------
    def write(self, rows: Iterable[dict]) -> None:
        """Append the rows of one or more whole images."""
        rows = list(rows)
        if self.format == "parquet":
            self._pending += rows
            if len(self._pending) >= PARQUET_PART_ROWS or time.monotonic() - self._last_part > PARQUET_PART_SECONDS:
                self._write_part()
            return
        buffer = io.StringIO()
        if self._csv:
            csv.DictWriter(buffer, PREDICTION_COLUMNS).writerows(_flat(row) for row in rows)
        else:
            buffer.writelines(json.dumps(row) + "\n" for row in rows)
        self._stream.write(buffer.getvalue())  # one write per call: a kill tears at most its tail
        self._stream.flush()

    def _write_part(self, *, always: bool = False) -> None:
        import pyarrow.parquet as pq

        if self._pending or always:
            final = self.out / f"part-{self._parts:05d}.parquet"
            with atomic_path(final) as temporary:
                pq.write_table(rows_to_table(self._pending), temporary)
            self._parts += 1
            self._pending = []
        self._last_part = time.monotonic()

    def close(self) -> None:
        if self.format == "parquet":
            if self._pending or not self._parts:  # an empty run still leaves a readable, typed dataset
                self._write_part(always=True)
        elif self.out is not None:
            self._stream.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
