"""Opening a store: `agestimate info` when the index is trusted (written at the record's
current version) against when it is checked against every embedding (as every open did
before index versions, and the first open of such a store still does).

    python benchmarks/store_open.py --store /work/stores/utk --repeats 5

The store is copied to a temporary folder first (the check records the index version there).
Prints the median seconds of each way, whole command and in-process (open + summary), and
their ratio; both ways run in turn in one process, so the ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agestimate.store.store import DATABASE, EmbeddingStore

from end_to_end import agestimate_command


def forget_index_version(store: Path) -> None:
    with sqlite3.connect(store / DATABASE) as db:
        db.execute("DELETE FROM meta WHERE key = 'index_version'")


def timed(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def open_and_summarise(store: Path) -> None:
    with EmbeddingStore(store) as db:
        db.summary()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    command = agestimate_command("info", "--json", "--store")
    seconds = {"checked, command": [], "trusted, command": [], "checked, open + summary": [], "trusted, open + summary": []}
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        shutil.copytree(args.store, store)
        for _ in range(args.repeats):
            for kind, run in (("command", lambda: subprocess.run(command + [str(store)], check=True, capture_output=True)),
                              ("open + summary", lambda: open_and_summarise(store))):
                forget_index_version(store)
                seconds[f"checked, {kind}"].append(timed(run))
                seconds[f"trusted, {kind}"].append(timed(run))
        with EmbeddingStore(store) as db:
            faces = db.summary()["faces"]
    medians = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    print(json.dumps({"store": args.store, "faces": faces, "repeats": args.repeats, "median_seconds": medians,
                      "checked_over_trusted": {kind: round(medians[f"checked, {kind}"] / medians[f"trusted, {kind}"], 2)
                                               for kind in ("command", "open + summary")}}, indent=2))


if __name__ == "__main__":
    main()
