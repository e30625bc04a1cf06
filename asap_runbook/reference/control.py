"""Drill control for a running reference deployment.

``python -m asap_runbook.reference control --workdir DIR <command>``:

* ``stop-redis hardened|misconfigured`` / ``start-redis hardened|misconfigured``: stop or restart
  the Redis the hardened agent (rate limits, nonces, ``/ready``) or the misconfigured agents (a
  task log they write to; their ``/ready`` ignores it) depend on. The command talks to the
  process that runs the deployment through ``DIR/control.sock``, so that process keeps owning
  (and eventually stops) whatever is restarted.
* ``run-agent hardened|misconfigured|stock [--port P]``: exec a uvicorn agent on ``127.0.0.1:$PORT``
  in the foreground, for the drills that start their own copy (the drain drill sets ``PORT`` and
  sends SIGTERM; RES-1..3 also set ``INVENTORY_AGENT_URL`` to their fault proxy).
  The hardened one drains for up to 20 s (``--timeout-graceful-shutdown 20``); the
  misconfigured one is started the careless way, with a 1 s drain that cuts slow requests; the
  stock one runs the team's unchanged source the way the deployment runs it (``uvicorn
  orders_service.app:app --app-dir examples/stock/src``, uvicorn's defaults: no drain bound).

The deployment exports the command prefix as ``ASAP_DEMO_CONTROL``; ``params/demo.yaml`` uses it
for ``drills.dependency_stop`` / ``dependency_start`` / ``agent_start``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .deployment import ReferenceDeployment

SOCKET_NAME = "control.sock"
INFO_NAME = "control.json"
_REDIS = {"hardened": "redis", "misconfigured": "misconfigured-redis"}
HARDENED_DRAIN_SECONDS = 20
MISCONFIGURED_DRAIN_SECONDS = 1


class ControlServer:
    """A Unix-socket server thread inside the process that runs the deployment."""

    def __init__(self, dep: "ReferenceDeployment") -> None:
        self.dep = dep
        self.path = dep.workdir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self._closed = threading.Event()
        info = {
            "socket": str(self.path),
            "python": dep.python,
            "token_file": str(dep.token_file),
            "redis_url": dep.redis.url if dep.redis else None,
            "misconfigured_redis_url": dep.misconfigured_redis.url if dep.misconfigured_redis else None,
        }
        (dep.workdir / INFO_NAME).write_text(json.dumps(info, indent=1))
        self.command = (f"{shlex.quote(dep.python)} -m asap_runbook.reference control "
                        f"--workdir {shlex.quote(str(dep.workdir))}")
        self.thread = threading.Thread(target=self._serve, name="reference-control", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    line = conn.makefile("r").readline().strip()
                    reply = self._handle(line)
                except Exception as exc:  # noqa: BLE001 - reported to the caller, never raised here
                    reply = f"error {type(exc).__name__}: {exc}"
                try:
                    conn.sendall((reply + "\n").encode())
                except OSError:
                    pass

    def _handle(self, line: str) -> str:
        verb, _, which = line.partition(" ")
        if verb not in ("stop-redis", "start-redis") or which not in _REDIS:
            return f"error unknown command {line!r}"
        name = _REDIS[which]
        if verb == "stop-redis":
            self.dep.stop_redis(name)
        else:
            self.dep.start_redis(name)
        return f"ok {verb} {which}"

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.close()
        finally:
            self.path.unlink(missing_ok=True)
        self.thread.join(timeout=2)


# ------------------------------------------------------------------------------------ client side
def _request(workdir: Path, line: str, timeout: float = 30) -> tuple[bool, str]:
    path = workdir / SOCKET_NAME
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall((line + "\n").encode())
            reply = s.makefile("r").readline().strip()
    except OSError as exc:
        return False, f"cannot reach the reference deployment at {path}: {exc.strerror or exc}"
    return reply.startswith("ok"), reply


def _run_agent(workdir: Path, role: str, port: int) -> int:
    from .deployment import (HARDENED_APP, MISCONFIGURED_APP, MISCONFIGURED_RATE_LIMIT, PACKAGE_ROOT, STOCK_AGENT_ID,
                             STOCK_APP, _stock_example)

    info = json.loads((workdir / INFO_NAME).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAP_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    public = f"http://127.0.0.1:{port}"
    if role == "hardened":
        env.update({
            # the copy counts its own clients (another Redis database): the drill's paced requests to it
            # must not share a budget with what the running agent is answering at the same time
            "ASAP_LOG_FORMAT": "json", "ASAP_REF_REDIS_URL": info["redis_url"],
            "ASAP_RATE_LIMIT_BACKEND": info["redis_url"].rsplit("/", 1)[0] + "/1", "ASAP_REF_PUBLIC_URL": public,
            "ASAP_REF_TOKEN": Path(info["token_file"]).read_text().strip(),
        })
        app, drain = HARDENED_APP, HARDENED_DRAIN_SECONDS
    elif role == "stock":
        # its ConfigMap and Secret (examples/stock/k8s); INVENTORY_AGENT_URL comes from the caller
        # (RES-1..3 point it at their fault proxy), like the ConfigMap value the drill overrides
        env.update({"PUBLIC_URL": public, "AGENT_ID": STOCK_AGENT_ID,
                    "API_TOKEN": Path(info["token_file"]).read_text().strip()})
        argv = [info["python"], "-m", "uvicorn", STOCK_APP, "--host", "127.0.0.1", "--port", str(port),
                "--no-server-header", "--app-dir", str(_stock_example() / "src")]
        os.execve(argv[0], argv, env)
    else:
        env.update({"ASAP_RATE_LIMIT": MISCONFIGURED_RATE_LIMIT, "ASAP_REF_PUBLIC_URL": public})
        if info.get("misconfigured_redis_url"):
            env["ASAP_REF_REDIS_URL"] = info["misconfigured_redis_url"]
        app, drain = MISCONFIGURED_APP, MISCONFIGURED_DRAIN_SECONDS
    argv = [info["python"], "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--no-server-header", "--timeout-graceful-shutdown", str(drain)]
    os.execve(argv[0], argv, env)  # the drill signals this very process
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asap_runbook.reference control",
                                     description="drill control for a running reference deployment")
    parser.add_argument("--workdir", type=Path, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in ("stop-redis", "start-redis"):
        p = sub.add_parser(verb)
        p.add_argument("which", choices=sorted(_REDIS))
    p = sub.add_parser("run-agent")
    p.add_argument("role", choices=["hardened", "misconfigured", "stock"])
    p.add_argument("--port", type=int, default=None, help="default: $PORT")
    args = parser.parse_args(argv)
    if args.command == "run-agent":
        port = args.port or int(os.environ.get("PORT", "0"))
        if not port:
            print("error: give --port or set PORT", file=sys.stderr)
            return 2
        return _run_agent(args.workdir.resolve(), args.role, port)
    ok, reply = _request(args.workdir.resolve(), f"{args.command} {args.which}")
    print(reply, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
