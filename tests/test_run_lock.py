"""The run lock that keeps a section's exclusive checks (bursts, outages) away from the other
sections' probes. Sections run in separate kernels, so the lock is tested across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from asap_runbook.engine import RunLock

HOLD_SHARED = textwrap.dedent("""
    import asyncio, pathlib, sys
    from asap_runbook.engine import RunLock
    run_dir, log = sys.argv[1], pathlib.Path(sys.argv[2])
    async def main():
        async with RunLock(run_dir).hold(exclusive=False):
            log.write_text("holding\\n")
            while not (pathlib.Path(run_dir) / "release").exists():
                await asyncio.sleep(0.05)
            log.write_text("holding\\nreleased\\n")
    asyncio.run(main())
""")


def test_exclusive_waits_for_a_shared_holder_in_another_process(tmp_path):
    log = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, str(tmp_path), str(log)])
    try:
        async def go():
            while not log.exists():
                await asyncio.sleep(0.05)
            order = []

            async def exclusive():
                async with RunLock(tmp_path).hold(exclusive=True):
                    order.append(("exclusive acquired", log.read_text().splitlines()))

            async def release_later():
                await asyncio.sleep(0.5)
                order.append(("release asked", None))
                (tmp_path / "release").touch()
            await asyncio.gather(exclusive(), release_later())
            return order

        order = asyncio.run(go())
        assert order[0] == ("release asked", None)
        assert order[1] == ("exclusive acquired", ["holding", "released"])  # only after the child let go
    finally:
        child.wait(timeout=10)


def test_shared_holders_do_not_wait_for_each_other(tmp_path):
    async def go():
        async with RunLock(tmp_path).hold(exclusive=False):
            async with RunLock(tmp_path).hold(exclusive=False):
                return "both held"
    # a shared lock that excluded another would poll until MAX_WAIT_SECONDS; the guard turns that into a failure
    assert asyncio.run(asyncio.wait_for(go(), timeout=30)) == "both held"


def test_no_run_dir_means_no_lock():
    assert RunLock(None).path is None
