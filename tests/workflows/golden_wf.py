"""The workflow behind tests/golden/order.json, and changed versions of it."""

from __future__ import annotations

from collections import Counter

import torpor

executed: Counter[str] = Counter()


@torpor.step()
def reserve(item: str) -> str:
    executed["reserve"] += 1
    return f"reserved {item}"


@torpor.step()
def charge(cents: int) -> str:
    executed["charge"] += 1
    return f"charged {cents}"


@torpor.step()
def refund(cents: int) -> str:
    executed["refund"] += 1
    return f"refunded {cents}"


@torpor.step()
def fraud_check(item: str) -> bool:
    executed["fraud_check"] += 1
    return True


@torpor.step()
def ship(item: str) -> str:
    executed["ship"] += 1
    return f"shipped {item}"


@torpor.workflow(name="golden.order")
def order(item: str, cents: int) -> list[str]:
    return [reserve(item), charge(cents), ship(item)]


@torpor.workflow(name="golden.order_changed")
def order_changed(item: str, cents: int) -> list[str]:
    # A deploy replaced the charge by a refund: old runs must not silently take this path.
    return [reserve(item), refund(cents), ship(item)]


@torpor.workflow(name="golden.order_patched")
def order_patched(item: str, cents: int) -> list[str]:
    reserved = reserve(item)
    if torpor.patched("fraud-check"):
        fraud_check(item)
    return [reserved, charge(cents), ship(item)]


if __name__ == "__main__":
    # Regenerates tests/golden/order.json (only when the journal format changes on purpose).
    import json
    import sys
    import tempfile
    from pathlib import Path

    torpor.configure(f"sqlite://{tempfile.mkdtemp()}/golden.db")
    run = torpor.start(order, "book", 1299)
    output = run.result(timeout=30)
    journal = [{"kind": e.kind, "payload": e.payload} for e in run.log()]
    golden = {
        "workflow": "golden.order",
        "input": {"args": ["book", 1299], "kwargs": {}},
        "output": output,
        "log": journal,
    }
    out = Path(__file__).parent.parent / "golden" / "order.json"
    out.write_text(json.dumps(golden, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
