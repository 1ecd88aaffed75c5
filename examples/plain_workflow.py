"""A plain durable workflow, no LLM: reserve, charge, ship — each step exactly once.

torpor run examples/plain_workflow.py:order '["book", 1299]'
torpor run examples/plain_workflow.py:order '["book", 1299]' --detach && torpor worker
"""

from __future__ import annotations

from dataclasses import dataclass

import torpor


@dataclass
class Receipt:
    id: str
    cents: int


@torpor.step()
def reserve(item: str) -> str:
    return f"reserved {item}"


@torpor.step(retries=3, backoff=0.5)
def charge(cents: int) -> Receipt:
    # A real payment API would take the key and refuse to charge twice for it.
    return Receipt(id=f"rc-{torpor.idempotency_key()}", cents=cents)


@torpor.step()
def ship(item: str, receipt: Receipt) -> str:
    return f"shipped {item} against {receipt.id}"


@torpor.workflow()
def order(item: str, cents: int) -> list[str]:
    reserved = reserve(item)
    receipt = charge(cents)
    return [reserved, ship(item, receipt)]


if __name__ == "__main__":
    run = torpor.start(order, "book", 1299)
    print(run.id, run.result(timeout=60))
