"""The recovery benchmark's workflow for Temporal (workflow classes must be module-level)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta

from temporalio import activity, workflow

CRASH_AT = int(os.environ.get("BENCH_CRASH_AT", "-1"))
first_new_step: list[float] = []


@activity.defn(name="step")
async def step(i: int) -> int:
    if i == CRASH_AT:  # the step after the N recorded ones: say so and block until killed
        print(f"at {CRASH_AT}", file=sys.__stdout__, flush=True)
        await asyncio.sleep(1e6)
    if not first_new_step:
        first_new_step.append(time.time())
    return i + 1


@workflow.defn(name="Steps", sandboxed=False)
class Steps:
    @workflow.run
    async def run(self, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await workflow.execute_local_activity(
                step, x, start_to_close_timeout=timedelta(hours=1)
            )
        return x
