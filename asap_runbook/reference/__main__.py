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
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus (nor its Alertmanager)")
    parser.add_argument("--misconfigured-agents", type=int, default=1, metavar="N")
    parser.add_argument("--restart-agent", metavar="NAME",
                        help="ask the deployment running in --workdir to kill and restart agent NAME, then exit")
    args = parser.parse_args(argv)
    if args.restart_agent:
        return _request_restart(args.workdir, args.restart_agent)
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


def _request_restart(workdir: Path | None, name: str, timeout: float = 60.0) -> int:  # an import on a busy host
    """Drill control: the running deployment's watcher kills and restarts the agent."""
    if workdir is None or not (workdir / "control").is_dir():
        print("error: --restart-agent needs --workdir of a running reference deployment", file=sys.stderr)
        return 2
    control = workdir / "control"
    for old in (control / f"restart-{name}.done", control / f"restart-{name}.failed"):
        old.unlink(missing_ok=True)
    (control / f"restart-{name}").write_text("restart\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for suffix, code in ((".done", 0), (".failed", 1)):
            f = control / f"restart-{name}{suffix}"
            if f.exists():
                print(f.read_text().strip())
                return code
        time.sleep(0.1)
    print(f"error: the deployment did not restart {name} within {timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
