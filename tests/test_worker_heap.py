"""A server worker settles its heap once the application has started: what startup left
alive is frozen out of the garbage collector's sight, so that a full collection walks only
what requests made (`serving.worker.settle_heap`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tests.test_worker_imports import run_probe

# In a process of its own: freezing the test process's heap would outlive the test.
PROBE = """
import asyncio, gc, json
from conductor_api.serving.worker import GC_THRESHOLD, serving_app

async def main():
    app = serving_app()
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        started = hasattr(app.state, "container")
        frozen = gc.get_freeze_count()
        threshold = gc.get_threshold()[0]
        # Only what is made from now on is tracked (and collected): the objects of the
        # started application are not.
        tracked = len(gc.get_objects())
    print(json.dumps({"before": before, "started": started, "frozen": frozen,
                      "threshold": threshold, "expected": GC_THRESHOLD, "tracked": tracked}))

asyncio.run(main())
"""


def test_the_started_application_is_frozen_out_of_the_collectors_sight(tmp_path: Path) -> None:
    seen = cast(dict[str, Any], run_probe(PROBE, tmp_path))
    assert seen["before"] == 0
    assert seen["started"] is True
    # Modules, routes, the container: tens of thousands of objects, none left tracked but
    # the few the probe itself made since.
    assert seen["frozen"] > 50_000
    assert seen["tracked"] < seen["frozen"] / 20
    assert seen["threshold"] == seen["expected"]
