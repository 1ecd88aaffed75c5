"""A real process that appends to a run's log; the concurrency and crash tests start it.

usage: python _appender.py URL RUN_ID MODE NAME COUNT
  MODE=expected: COUNT appends with expected_seq, retrying on LogConflictError
  MODE=burst:    appends until killed (COUNT ignored), printing each seq to stdout
  MODE=plain:    COUNT plain appends
"""

from __future__ import annotations

import hashlib
import sys

from torpor import LogConflictError
from torpor.store import open_store


def checked_payload(name: str, i: int) -> dict[str, object]:
    data = f"{name}:{i}:" + "x" * (4096 + i % 997)
    return {"writer": name, "i": i, "data": data, "sha": hashlib.sha256(data.encode()).hexdigest()}


def main() -> None:
    url, run_id, mode, name, count = sys.argv[1:6]
    store = open_store(url)
    if mode == "expected":
        conflicts = 0
        for i in range(int(count)):
            while True:
                expected = store.get_run(run_id).last_seq + 1
                try:
                    store.append(run_id, "entry", checked_payload(name, i), expected_seq=expected)
                    break
                except LogConflictError:
                    conflicts += 1
        print(conflicts)
    elif mode == "burst":
        i = 0
        while True:
            seq = store.append(run_id, "entry", checked_payload(name, i))
            print(seq, flush=True)
            i += 1
    else:
        for i in range(int(count)):
            store.append(run_id, "entry", checked_payload(name, i))
    store.close()


if __name__ == "__main__":
    main()
