"""``python -m asap_runbook.reference [--workdir DIR]``: run the reference deployment until Ctrl-C.

``python -m asap_runbook.reference control --workdir DIR ...`` controls a running one (drills).

Prints ``export`` lines for the ``ASAP_DEMO_*`` variables. The token's value is never printed:
its line reads it from ``<workdir>/token`` (``export ASAP_DEMO_TOKEN="$(cat <workdir>/token)"``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from .deployment import ReferenceDeployment, ReferenceDeploymentError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["control"]:  # drill control of a running deployment
        from .control import main as control_main

        return control_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m asap_runbook.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    parser.add_argument("--misconfigured-agents", type=int, default=1, metavar="N")
    args = parser.parse_args(argv)
    # Ctrl-C must stop everything even when started with SIGINT ignored (background job, supervisor)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="asap-reference-"))
    dep = ReferenceDeployment(workdir, prometheus=not args.no_prometheus, misconfigured_agents=args.misconfigured_agents)
    try:
        with dep:
            print(f"# reference deployment up in {dep.startup_seconds:.1f} s; workdir {dep.workdir}")
            print(f"# the same lines are in {dep.env_file} (source it); Ctrl-C stops everything")
            for line in dep.export_lines():
                print(line)
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except ReferenceDeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if dep.shutdown_seconds is not None:
            print(f"# stopped in {dep.shutdown_seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
