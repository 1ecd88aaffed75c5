"""Durable sleeps and waits, for the worker-restart tests."""

from __future__ import annotations

import torpor


@torpor.step()
def mark(label: str) -> str:
    return label


@torpor.workflow()
def sleeper(seconds: float) -> str:
    mark("before")
    torpor.sleep(seconds)
    return mark("after")


@torpor.workflow()
def approval() -> dict:
    mark("asked")
    answer = torpor.wait_for_event("approval", timeout=600)
    return {"answer": answer}
