"""The reference deployment: real ASAP agents, nginx, Redis, Prometheus and Alertmanager on loopback.

Every component runs in its own process (its own session / process group), every port is
picked free at start, every file lives under the work directory, and everything started is
stopped on exit, on exception and on SIGTERM (Ctrl-C arrives as KeyboardInterrupt).

Layout of the work directory::

    <workdir>/token                    the bearer token (0600; never printed)
    <workdir>/env.sh                   export lines (the token as $(cat <workdir>/token))
    <workdir>/pki/                     ca.pem, hardened-chain.pem, hardened-key.pem, weak-*.pem
    <workdir>/conf/                    hardened-nginx.conf, misconfigured-nginx.conf, stock-nginx.conf
                                       (+ stock-sites/orders-service.conf, which it includes), prometheus.yml
    <workdir>/logs/<component>.log     stdout+stderr (and nginx error_log) of each component
    <workdir>/nginx/<name>/            nginx prefix: pid file, temp dirs
    <workdir>/prom/                    Prometheus TSDB
    <workdir>/alertmanager/            Alertmanager storage (silences, notification log); its configuration
                                       is asap_runbook/data/alertmanager/alertmanager.yml, as shipped
    <workdir>/redis/                   Redis working directory (persistence disabled)
    <workdir>/control.sock, control.json  drill control (see asap_runbook.reference.control)

``asap.transport`` is never imported in this process: the agents are
``asap_runbook.reference.hardened_app:app``, ``...misconfigured_app:app`` and the stock
``orders_service.app:app`` (``--app-dir examples/stock/src``) under uvicorn.
"""

from __future__ import annotations

from ..errors import DeploymentError

import atexit
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import yaml

from .pki import PKIFiles, make_pki

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding asap_runbook/
TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_ALERT_RULES = Path(__file__).resolve().parents[1] / "data" / "prometheus" / "asap-alerts.yml"
# the team's routing: pages to on-call, warnings to tickets, the misconfigured agent's down alert nowhere
ALERTMANAGER_CONFIG = Path(__file__).resolve().parents[1] / "data" / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's

def _stock_example() -> Path:
    from .._paths import shipped

    return shipped("examples") / "stock"


STOCK_ALERT_RULES = _stock_example() / "prometheus" / "alerts.yml"  # the stock team's own rules

HARDENED_APP = "asap_runbook.reference.hardened_app:app"
MISCONFIGURED_APP = "asap_runbook.reference.misconfigured_app:app"
MISCONFIGURED_RATE_LIMIT = "100000/second"  # ASAP_RATE_LIMIT of the misconfigured agents: loosened, no real limit
# The stock target runs the example team's own source (examples/stock/src), unchanged.
STOCK_APP = "orders_service.app:app"
STOCK_AGENT_ID = "urn:asap:agent:orders-service"
HARDENED_AGENT_ID = "urn:asap:agent:hardened-ref"
MISCONFIGURED_AGENT_ID = "urn:asap:agent:misconfigured-ref"
PROBE_SENDER = "urn:asap:agent:sre-probe"
TOKEN_ENV = "ASAP_DEMO_TOKEN"

# three agents import asap.transport at once; on a loaded 2-core machine that took over 20 s. A
# component that dies during start-up is reported at once (its exit), not after this wait.
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ReferenceDeploymentError(DeploymentError):
    """The reference deployment could not start (missing binary, component not ready, ...): the
    CLI prints its one sentence, no traceback."""


# --------------------------------------------------------------------------------------------
# info objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentInfo:
    """One reference agent and the nginx in front of it."""

    name: str  # "hardened", "misconfigured", "misconfigured-2", "stock"
    role: str  # "hardened" | "misconfigured" | "stock"
    agent_id: str  # manifest id (URN)
    base_url: str  # https://127.0.0.1:<nginx tls port>
    http_url: str  # http://127.0.0.1:<nginx plain port>
    direct_url: str  # http://127.0.0.1:<uvicorn port>  (no TLS, no proxy)
    ca_file: Path | None  # trust anchor for base_url (None for the weak nginx: self-signed+expired)
    cert_file: Path  # the certificate nginx serves (leaf chain / self-signed)
    log_file: Path  # uvicorn stdout+stderr (the agent's logs)
    pid: int  # the uvicorn process itself
    app_ref: str  # "module:app" importable by uvicorn (import it only in a subprocess)
    app_env: dict[str, str]  # non-secret env needed to import app_ref identically (token excluded)
    uvicorn_argv: tuple[str, ...]
    nginx_conf: Path
    nginx_pid: int
    nginx_log: Path
    nginx_access_log: Path
    token_env: str | None  # name of the env var holding the bearer token (hardened and stock)

    @property
    def asap_url(self) -> str:
        return f"{self.base_url}/asap"


@dataclass(frozen=True)
class RedisInfo:
    port: int
    url: str  # redis://127.0.0.1:<port>/0
    log_file: Path


@dataclass(frozen=True)
class PrometheusInfo:
    url: str
    pid: int
    config_file: Path
    rules_file: Path
    log_file: Path
    data_dir: Path


@dataclass(frozen=True)
class AlertmanagerInfo:
    url: str
    pid: int
    config_file: Path
    log_file: Path
    data_dir: Path


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data[-lines:]) or "(log is empty)"


def _port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _render(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    if "@@" in text:
        raise ReferenceDeploymentError(f"unrendered placeholder left in {template}")
    return text


# --------------------------------------------------------------------------------------------
# the deployment
# --------------------------------------------------------------------------------------------
class ReferenceDeployment:
    """Start the reference deployment; use as a context manager.

    >>> with ReferenceDeployment(Path("/tmp/ref")) as dep:   # doctest: +SKIP
    ...     env = dep.env()
    """

    def __init__(
        self,
        workdir: Path | str,
        prometheus: bool = True,
        misconfigured_agents: int = 1,
        *,
        stock: bool = True,
        alert_rules: Path | str | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        python: str | None = None,
    ) -> None:
        if misconfigured_agents < 0:
            raise ValueError("misconfigured_agents must be >= 0")
        self.workdir = Path(workdir).resolve()
        self.prometheus_enabled = bool(prometheus)
        self.misconfigured_count = int(misconfigured_agents)
        self.stock_enabled = bool(stock)
        self.alert_rules = Path(alert_rules).resolve() if alert_rules else DEFAULT_ALERT_RULES
        self.ready_timeout = float(ready_timeout)
        self.python = python or sys.executable

        self.logs_dir = self.workdir / "logs"
        self.conf_dir = self.workdir / "conf"
        self.token_file = self.workdir / "token"
        self.env_file = self.workdir / "env.sh"

        self.token: str = ""
        self.pki: PKIFiles | None = None
        self.hardened: AgentInfo | None = None
        self.misconfigured: list[AgentInfo] = []
        self.stock: AgentInfo | None = None
        self.redis: RedisInfo | None = None
        # the misconfigured agents' own Redis (a dependency they use but /ready ignores)
        self.misconfigured_redis: RedisInfo | None = None
        self._control = None
        self.prometheus: PrometheusInfo | None = None
        self.alertmanager: AlertmanagerInfo | None = None
        self.startup_seconds: float | None = None
        self.shutdown_seconds: float | None = None

        self._procs: dict[str, _Proc] = {}
        self._used_ports: set[int] = set()
        self._lock = threading.RLock()
        self._started = False
        self._stopping = False
        self._prev_sigterm = None
        self._atexit_registered = False
        self._launch: dict[str, tuple[list[str], dict[str, str], str]] = {}  # agent name -> argv, env, health URL
        self._control_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- context manager
    def __enter__(self) -> "ReferenceDeployment":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- public API
    def env(self) -> dict[str, str]:
        """The ``ASAP_DEMO_*`` variables (params/demo.yaml interpolates them). Contains the token."""
        if not self._started or self.hardened is None or self.pki is None:
            raise ReferenceDeploymentError("the reference deployment is not running")
        env = {
            "ASAP_DEMO_HARDENED_URL": self.hardened.base_url,
            "ASAP_DEMO_HARDENED_HTTP_URL": self.hardened.http_url,
            "ASAP_DEMO_CA_FILE": str(self.pki.ca_file),
            TOKEN_ENV: self.token,
            "ASAP_DEMO_WORKDIR": str(self.workdir),
            "ASAP_DEMO_HARDENED_LOG": str(self.hardened.log_file),
            "ASAP_DEMO_HARDENED_NGINX_CONF": str(self.hardened.nginx_conf),
        }
        if self.redis is not None:
            env["ASAP_DEMO_REDIS"] = self.redis.url  # for app introspection (params app_env)
        if self.misconfigured:
            m = self.misconfigured[0]
            env.update(
                {
                    "ASAP_DEMO_MISCONFIGURED_URL": m.base_url,
                    "ASAP_DEMO_MISCONFIGURED_HTTP_URL": m.http_url,
                    "ASAP_DEMO_MISCONFIGURED_DIRECT_URL": m.direct_url,
                    "ASAP_DEMO_MISCONFIGURED_LOG": str(m.log_file),
                    "ASAP_DEMO_MISCONFIGURED_NGINX_CONF": str(m.nginx_conf),
                }
            )
        if self.stock is not None:
            env.update(
                {
                    "ASAP_DEMO_STOCK_URL": self.stock.base_url,
                    "ASAP_DEMO_STOCK_HTTP_URL": self.stock.http_url,
                    "ASAP_DEMO_STOCK_DIRECT_URL": self.stock.direct_url,
                    "ASAP_DEMO_STOCK_LOG": str(self.stock.log_file),
                    "ASAP_DEMO_STOCK_NGINX_CONF": str(self.stock.nginx_conf),
                }
            )
        if self.prometheus is not None:
            env["ASAP_DEMO_PROMETHEUS_URL"] = self.prometheus.url
        if self.alertmanager is not None:
            env["ASAP_DEMO_ALERTMANAGER_URL"] = self.alertmanager.url
        if self._control is not None:
            env["ASAP_DEMO_CONTROL"] = self._control.command
        return env

    def export_lines(self) -> list[str]:
        """``export NAME=value`` lines, safe to print: the token is read from the token file."""
        import shlex

        lines = []
        for name, value in self.env().items():
            if name == TOKEN_ENV:
                lines.append(f'export {name}="$(cat {shlex.quote(str(self.token_file))})"')
            else:
                lines.append(f"export {name}={shlex.quote(value)}")
        return lines

    @property
    def redis_pid(self) -> int | None:
        p = self._procs.get("redis")
        return p.pid if p and p.popen.poll() is None else None

    def pids(self) -> dict[str, int]:
        """PID of every process started (including ones already stopped)."""
        return {name: p.pid for name, p in self._procs.items()}

    def ports(self) -> set[int]:
        return set(self._used_ports)

    def stop_redis(self, which: str = "redis") -> None:
        """Stop Redis (readiness drill): the hardened /ready then answers 503.
        ``which="misconfigured-redis"`` stops the misconfigured agents' Redis instead."""
        with self._lock:
            proc = self._procs.get(which)
            if proc is not None:
                self._terminate([proc])

    def start_redis(self, which: str = "redis") -> None:
        """(Re)start Redis on the same port and wait for PING."""
        with self._lock:
            proc = self._procs.get(which)
            if proc is not None and proc.popen.poll() is None:
                return
            self._spawn_redis(append_log=True, which=which)
            self._wait_ready({which: lambda: self._redis_ready(which)})

    def prometheus_targets(self) -> dict[str, list[dict]]:
        """Active Prometheus targets by job: ``{job: [{"instance", "health", "lastError"}]}``."""
        if self.prometheus is None:
            raise ReferenceDeploymentError("Prometheus is not part of this deployment")
        r = httpx.get(f"{self.prometheus.url}/api/v1/targets", params={"state": "active"}, timeout=5)
        r.raise_for_status()
        out: dict[str, list[dict]] = {}
        for t in r.json()["data"]["activeTargets"]:
            out.setdefault(t["labels"]["job"], []).append(
                {"instance": t["labels"].get("instance"), "health": t["health"], "lastError": t.get("lastError", "")}
            )
        return out

    def wait_prometheus_targets(
        self,
        expected: dict[str, str] | None = None,
        timeout: float = 15.0,
    ) -> dict[str, list[dict]]:
        """Poll until every job in *expected* has all its targets in the given health.

        Default expectation: ``asap-hardened`` up, ``asap-misconfigured`` and ``orders-service`` (stock) down (as shipped).
        Returns the last target listing; raises ReferenceDeploymentError on timeout.
        """
        if expected is None:
            expected = {"asap-hardened": "up"}
            if self.misconfigured:
                expected["asap-misconfigured"] = "down"
            if self.stock is not None:
                expected["orders-service"] = "down"  # asap-protocol's metrics as shipped: no "# EOF"
        deadline = time.monotonic() + timeout
        targets: dict[str, list[dict]] = {}
        while True:
            try:
                targets = self.prometheus_targets()
            except httpx.HTTPError:
                targets = {}
            if all(
                targets.get(job) and {t["health"] for t in targets[job]} == {health}
                for job, health in expected.items()
            ):
                return targets
            if time.monotonic() > deadline:
                raise ReferenceDeploymentError(
                    f"Prometheus targets not as expected after {timeout:.0f} s: expected {expected}, got {targets}"
                )
            time.sleep(0.5)

    # ---------------------------------------------------------------- start
    def start(self) -> "ReferenceDeployment":
        with self._lock:
            if self._started:
                return self
            t0 = time.monotonic()
            self._check_binaries()
            self._install_signal_handlers()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            self._started = True
            self._stopping = False
            try:
                self._start_all()
            except BaseException:
                self.stop()
                raise
            self.startup_seconds = time.monotonic() - t0
            return self

    def _check_binaries(self) -> None:
        need = ["nginx", "redis-server"] + (["prometheus", "alertmanager"] if self.prometheus_enabled else [])
        self._bins: dict[str, str] = {}
        missing = []
        for name in need:
            names = ALERTMANAGER_BINARIES if name == "alertmanager" else (name,)
            path = next((p for p in map(find_binary, names) if p), None)
            if path is None:
                missing.append(names[0])
            else:
                self._bins[name] = path
        if missing:
            hint = ("; pass prometheus=False to run without Prometheus and Alertmanager"
                    if {"prometheus", "prometheus-alertmanager"} & set(missing) else "")
            raise ReferenceDeploymentError(
                f"required binaries not found on PATH or in /usr/sbin: {', '.join(missing)} "
                f"(Debian packages: nginx, redis-server, prometheus, prometheus-alertmanager){hint}"
            )
        if self.prometheus_enabled and not self.alert_rules.is_file():
            raise ReferenceDeploymentError(f"alert rules file not found: {self.alert_rules}")

    def _free_port(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self._used_ports:
                self._used_ports.add(port)
                return port
        raise ReferenceDeploymentError("could not find a free loopback port")

    def _start_all(self) -> None:
        wd = self.workdir
        for d in (wd, self.logs_dir, self.conf_dir, wd / "redis"):
            d.mkdir(parents=True, exist_ok=True)
        for state in ("prom", "alertmanager"):
            if (wd / state).exists():
                shutil.rmtree(wd / state, ignore_errors=True)

        self.token = secrets.token_urlsafe(32)  # 43 chars
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.token + "\n")
        self.pki = make_pki(wd / "pki")

        # ports
        redis_port = self._free_port()
        h_agent, h_tls, h_http = self._free_port(), self._free_port(), self._free_port()
        mis_redis_port = self._free_port() if self.misconfigured_count else None
        mis_ports = [(self._free_port(), self._free_port(), self._free_port()) for _ in range(self.misconfigured_count)]
        stock_ports = (self._free_port(), self._free_port(), self._free_port()) if self.stock_enabled else None
        prom_port = self._free_port() if self.prometheus_enabled else None
        am_port = self._free_port() if self.prometheus_enabled else None

        # Redis
        self.redis = RedisInfo(
            port=redis_port, url=f"redis://127.0.0.1:{redis_port}/0", log_file=self.logs_dir / "redis.log"
        )
        self._spawn_redis(append_log=False)
        checks: dict[str, Callable[[], bool]] = {"redis": self._redis_ready}
        if mis_redis_port:
            self.misconfigured_redis = RedisInfo(
                port=mis_redis_port, url=f"redis://127.0.0.1:{mis_redis_port}/0",
                log_file=self.logs_dir / "misconfigured-redis.log",
            )
            self._spawn_redis(append_log=False, which="misconfigured-redis")
            checks["misconfigured-redis"] = lambda: self._redis_ready("misconfigured-redis")

        # hardened agent + nginx
        self.hardened = self._start_agent_pair(
            name="hardened", role="hardened", agent_port=h_agent, tls_port=h_tls, http_port=h_http
        )
        checks["hardened"] = self._http_ok(f"{self.hardened.direct_url}/health")
        checks["hardened-nginx"] = self._nginx_ready(
            self.hardened, verify=ssl.create_default_context(cafile=str(self.pki.ca_file))
        )

        # misconfigured agents + weak nginx
        self.misconfigured = []
        for i, (a, t, h) in enumerate(mis_ports):
            name = "misconfigured" if i == 0 else f"misconfigured-{i + 1}"
            info = self._start_agent_pair(name=name, role="misconfigured", agent_port=a, tls_port=t, http_port=h)
            self.misconfigured.append(info)
            checks[name] = self._http_ok(f"{info.direct_url}/health")
            checks[f"{name}-nginx"] = self._nginx_ready(info, verify=False)

        # stock agent + stock nginx
        if stock_ports is not None:
            a, t, h = stock_ports
            self.stock = self._start_agent_pair(name="stock", role="stock", agent_port=a, tls_port=t, http_port=h)
            checks["stock"] = self._http_ok(f"{self.stock.direct_url}/health")
            checks["stock-nginx"] = self._nginx_ready(
                self.stock, verify=ssl.create_default_context(cafile=str(self.pki.ca_file))
            )

        # Alertmanager, then the Prometheus that sends it alerts
        if self.prometheus_enabled:
            assert prom_port is not None and am_port is not None
            self.alertmanager = self._start_alertmanager(am_port)
            checks["alertmanager"] = self._http_ok(f"{self.alertmanager.url}/-/ready")
            self.prometheus = self._start_prometheus(prom_port)
            checks["prometheus"] = self._http_ok(f"{self.prometheus.url}/-/ready")

        self._wait_ready(checks)
        from .control import ControlServer  # drills reach this running deployment through it

        self._control = ControlServer(self)
        self._write_env_file()
        self._start_control_watcher()

    # ---------------------------------------------------------------- components
    def _spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
               log_file: Path | None = None, append_log: bool = False, cwd: Path | None = None) -> _Proc:
        log_file = log_file or self.logs_dir / f"{name}.log"
        # Children die with us even on SIGKILL (PR_SET_PDEATHSIG via setpriv, which execs the
        # real binary so the recorded PID is the component's own). Only from the main thread:
        # the death signal fires when the *thread* that forked exits.
        prefix: list[str] = []
        setpriv = find_binary("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            prefix = [setpriv, "--pdeathsig", "TERM", "--"]
        with open(log_file, "ab" if append_log else "wb") as fh:
            popen = subprocess.Popen(
                prefix + argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd or self.workdir),
                start_new_session=True,  # own session + process group: killpg reaches its children
                close_fds=True,
            )
        proc = _Proc(name=name, popen=popen, log_file=log_file)
        self._procs[name] = proc
        return proc

    def _redis_info(self, which: str) -> RedisInfo:
        info = self.misconfigured_redis if which == "misconfigured-redis" else self.redis
        if info is None:
            raise ReferenceDeploymentError(f"no {which} in this deployment")
        return info

    def _spawn_redis(self, append_log: bool, which: str = "redis") -> None:
        info = self._redis_info(which)
        argv = [
            self._bins["redis-server"], "--port", str(info.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.workdir / "redis"), "--logfile", "",
        ]
        self._spawn(which, argv, log_file=info.log_file, append_log=append_log)

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAP_", "OTEL_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PACKAGE_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.pop(TOKEN_ENV, None)
        return env

    def _start_agent_pair(self, *, name: str, role: str, agent_port: int, tls_port: int, http_port: int) -> AgentInfo:
        assert self.pki is not None and self.redis is not None
        base_url = f"https://127.0.0.1:{tls_port}"
        http_url = f"http://127.0.0.1:{http_port}"
        direct_url = f"http://127.0.0.1:{agent_port}"
        app_dir: list[str] = []
        if role == "stock":
            app_ref, agent_id = STOCK_APP, STOCK_AGENT_ID
            # what the team's ConfigMap and Secret set; the downstream (inventory) agent is the
            # misconfigured one when it runs (any ASAP agent answers task.request)
            app_env = {"PUBLIC_URL": base_url, "AGENT_ID": agent_id}
            if self.misconfigured:
                app_env["INVENTORY_AGENT_URL"] = self.misconfigured[0].direct_url
            secret_env = {"API_TOKEN": self.token}
            proxy_args = []  # uvicorn's defaults: proxy headers trusted from 127.0.0.1
            app_dir = ["--app-dir", str(_stock_example() / "src")]
        elif role == "hardened":
            app_ref = HARDENED_APP
            agent_id = HARDENED_AGENT_ID
            app_env = {
                "ASAP_LOG_FORMAT": "json",
                "ASAP_RATE_LIMIT_BACKEND": self.redis.url,
                "ASAP_REF_REDIS_URL": self.redis.url,
                "ASAP_REF_PUBLIC_URL": base_url,
            }
            secret_env = {"ASAP_REF_TOKEN": self.token}
            proxy_args = ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"]
        else:
            app_ref = MISCONFIGURED_APP
            agent_id = MISCONFIGURED_AGENT_ID if name == "misconfigured" else f"{MISCONFIGURED_AGENT_ID}-{name.rsplit('-', 1)[-1]}"
            app_env = {
                "ASAP_RATE_LIMIT": MISCONFIGURED_RATE_LIMIT,
                "ASAP_DEBUG": "1",
                "ASAP_REF_PUBLIC_URL": http_url,
                "ASAP_REF_AGENT_ID": agent_id,
            }
            if self.misconfigured_redis is not None:
                app_env["ASAP_REF_REDIS_URL"] = self.misconfigured_redis.url
            secret_env = {}
            proxy_args = ["--proxy-headers", "--forwarded-allow-ips", "*"]
        argv = [
            self.python, "-m", "uvicorn", app_ref, "--host", "127.0.0.1", "--port", str(agent_port),
            "--no-server-header", *proxy_args, *app_dir,
        ]
        env = self._base_env() | app_env | secret_env
        proc = self._spawn(name, argv, env=env, cwd=self.workdir)
        self._launch[name] = (argv, env, f"{direct_url}/health")

        # nginx in front
        if role == "stock":
            template, cert, key = "stock-nginx.conf", self.pki.cert_chain, self.pki.cert_key
        elif role == "hardened":
            template, cert, key = "hardened-nginx.conf", self.pki.cert_chain, self.pki.cert_key
        else:
            template, cert, key = "weak-nginx.conf", self.pki.weak_cert, self.pki.weak_key
        conf, nproc, nginx_log, access_log = self._start_nginx(name, template, cert, key, agent_port, tls_port, http_port)
        return AgentInfo(
            name=name, role=role, agent_id=agent_id, base_url=base_url, http_url=http_url,
            direct_url=direct_url, ca_file=self.pki.ca_file if role != "misconfigured" else None,
            cert_file=cert, log_file=proc.log_file, pid=proc.pid, app_ref=app_ref, app_env=app_env,
            uvicorn_argv=tuple(argv), nginx_conf=conf, nginx_pid=nproc.pid, nginx_log=nginx_log,
            nginx_access_log=access_log, token_env=TOKEN_ENV if role != "misconfigured" else None,
        )

    def _start_nginx(self, name: str, template: str, cert: Path, key: Path, upstream_port: int, tls_port: int,
                     http_port: int) -> tuple[Path, _Proc, Path, Path]:
        """nginx from `template` (TLS with `cert`/`key`, plain HTTP) in front of 127.0.0.1:`upstream_port`."""
        prefix = self.workdir / "nginx" / name
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        nginx_log = self.logs_dir / f"{name}-nginx.log"
        access_log = self.logs_dir / f"{name}-nginx-access.log"
        conf = self.conf_dir / f"{name}-nginx.conf"
        sites_dir = self.conf_dir / f"{name}-sites"  # the stock config includes its site from here
        values = {
            "USER_DIRECTIVE": "user root;" if os.geteuid() == 0 else "# (not root: workers run as the current user)",
            "PREFIX": str(prefix),
            "ERROR_LOG": str(nginx_log),
            "ACCESS_LOG": str(access_log),
            "UPSTREAM_PORT": str(upstream_port),
            "TLS_PORT": str(tls_port),
            "HTTP_PORT": str(http_port),
            "CERT_CHAIN": str(cert),
            "CERT_KEY": str(key),
            "SITES_DIR": str(sites_dir),
        }
        conf.write_text(_render(template, values))
        site_template = template.replace("-nginx.conf", "-site.conf")
        if (TEMPLATES / site_template).is_file():
            sites_dir.mkdir(parents=True, exist_ok=True)
            (sites_dir / "orders-service.conf").write_text(_render(site_template, values))
        nginx_argv = [
            self._bins["nginx"], "-p", str(prefix), "-c", str(conf), "-e", str(nginx_log), "-g", "daemon off;",
        ]
        nproc = self._spawn(f"{name}-nginx", nginx_argv, log_file=nginx_log, cwd=prefix)
        return conf, nproc, nginx_log, access_log

    def start_tls_front(self, name: str, cert: Path, key: Path, behind: str = "hardened") -> tuple[str, str]:
        """Another hardened nginx, serving `cert`, in front of the running agent `behind`: how a
        certificate problem looks on a real proxy (tests of the certificate checks). Returns its
        (https base URL, plain-HTTP URL); it stops with the deployment or with stop_tls_front."""
        agent = self.hardened if behind == "hardened" else next(m for m in self.misconfigured if m.name == behind)
        tls_port, http_port = self._free_port(), self._free_port()
        info = dataclasses.replace(agent, base_url=f"https://127.0.0.1:{tls_port}", http_url=f"http://127.0.0.1:{http_port}")
        with self._lock:
            self._start_nginx(name, "hardened-nginx.conf", cert, key, int(agent.direct_url.rsplit(":", 1)[1]),
                              tls_port, http_port)
            self._wait_ready({f"{name}-nginx": self._nginx_ready(info, verify=False)})
        return info.base_url, info.http_url

    def stop_tls_front(self, name: str) -> None:
        proc = self._procs.pop(f"{name}-nginx", None)
        if proc is not None:
            self._terminate([proc])

    def _start_alertmanager(self, port: int) -> AlertmanagerInfo:
        data_dir = self.workdir / "alertmanager"
        argv = [
            self._bins["alertmanager"],
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port (it would listen on every interface)
        ]
        proc = self._spawn("alertmanager", argv, cwd=self.workdir)
        return AlertmanagerInfo(url=f"http://127.0.0.1:{port}", pid=proc.pid, config_file=ALERTMANAGER_CONFIG,
                                log_file=proc.log_file, data_dir=data_dir)

    def _start_prometheus(self, port: int) -> PrometheusInfo:
        assert self.hardened is not None and self.pki is not None
        data_dir = self.workdir / "prom"
        config = {
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
            "rule_files": [str(self.alert_rules)],
            "scrape_configs": [
                {
                    "job_name": "asap-hardened",
                    "scheme": "https",
                    "metrics_path": "/asap/metrics",
                    "tls_config": {"ca_file": str(self.pki.ca_file)},
                    "static_configs": [{"targets": [self.hardened.base_url.removeprefix("https://")],
                                        "labels": {"agent": self.hardened.agent_id}}],
                },
            ],
        }
        if self.misconfigured:
            config["scrape_configs"].append(
                {
                    "job_name": "asap-misconfigured",
                    "scheme": "http",
                    "metrics_path": "/asap/metrics",
                    "static_configs": [
                        {"targets": [m.direct_url.removeprefix("http://")], "labels": {"agent": m.agent_id}}
                        for m in self.misconfigured
                    ],
                }
            )
        if self.stock is not None:
            # the stock team's own jobs (examples/stock/prometheus/prometheus.yml, static here): the
            # agent's metrics, and the ingress exporter that would count 429/413 at the proxy. No
            # exporter that counts nginx statuses runs here (Debian's prometheus-nginx-exporter only
            # reads stub_status; Debian's mtail could count them from the access log, not wired yet),
            # so that job finds no target: the checks see its absence, and no metric is faked.
            config["scrape_configs"] += [
                {
                    "job_name": "orders-service",
                    "scheme": "https",
                    "metrics_path": "/asap/metrics",
                    "tls_config": {"ca_file": str(self.pki.ca_file)},
                    "static_configs": [{"targets": [self.stock.base_url.removeprefix("https://")]}],
                },
                {"job_name": "ingress-nginx", "static_configs": [{"targets": []}]},
            ]
            config["rule_files"].append(str(STOCK_ALERT_RULES))
        if self.alertmanager is not None:
            config["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": [self.alertmanager.url.removeprefix("http://")]}]}]}
        conf = self.conf_dir / "prometheus.yml"
        conf.write_text("# rendered by asap_runbook.reference\n" + yaml.safe_dump(config, sort_keys=False))
        argv = [
            self._bins["prometheus"],
            f"--config.file={conf}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ]
        proc = self._spawn("prometheus", argv, cwd=self.workdir)
        return PrometheusInfo(
            url=f"http://127.0.0.1:{port}", pid=proc.pid, config_file=conf, rules_file=self.alert_rules,
            log_file=proc.log_file, data_dir=data_dir,
        )

    # ---------------------------------------------------------------- readiness
    def _redis_ready(self, which: str = "redis") -> bool:
        import redis

        client = redis.Redis(port=self._redis_info(which).port, host="127.0.0.1", socket_connect_timeout=0.3, socket_timeout=0.3)
        try:
            return bool(client.ping())
        except Exception:  # noqa: BLE001
            return False
        finally:
            client.close()

    @staticmethod
    def _http_ok(url: str, verify: ssl.SSLContext | str | bool = True) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return httpx.get(url, timeout=0.5, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        return check

    @staticmethod
    def _nginx_ready(info: AgentInfo, verify: ssl.SSLContext | bool) -> Callable[[], bool]:
        """Both nginx ports answer: plain HTTP with any response, TLS with a completed handshake."""

        def check() -> bool:
            try:
                httpx.get(f"{info.http_url}/health", timeout=0.5)
                httpx.get(f"{info.base_url}/health", timeout=0.5, verify=verify)
                return True
            except httpx.HTTPError:
                return False

        return check

    def _wait_ready(self, checks: dict[str, Callable[[], bool]]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = dict(checks)
        while pending:
            for name in list(pending):
                proc = self._procs.get(self._proc_name(name))
                if proc is not None and proc.popen.poll() is not None:
                    raise ReferenceDeploymentError(
                        f"{name} exited with code {proc.popen.returncode} during start-up; "
                        f"last lines of {proc.log_file}:\n{_tail(proc.log_file)}"
                    )
                if pending[name]():
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                name = next(iter(pending))
                proc = self._procs.get(self._proc_name(name))
                log = proc.log_file if proc else self.logs_dir / f"{name}.log"
                raise ReferenceDeploymentError(
                    f"{name} did not become ready within {self.ready_timeout:.0f} s "
                    f"(still waiting for: {', '.join(pending)}); last lines of {log}:\n{_tail(log)}"
                )
            time.sleep(0.1)

    @staticmethod
    def _proc_name(check_name: str) -> str:
        return check_name

    def _write_env_file(self) -> None:
        self.env_file.write_text("# source me: reference deployment variables\n" + "\n".join(self.export_lines()) + "\n")

    # ---------------------------------------------------------------- restart control (drills)
    @property
    def control_dir(self) -> Path:
        return self.workdir / "control"

    def agent_pid(self, name: str) -> int | None:
        p = self._procs.get(name)
        return p.pid if p and p.popen.poll() is None else None

    def restart_agent(self, name: str) -> dict:
        """Kill an agent with SIGKILL (a crash, an OOM kill, an evicted pod) and start it again on the
        same port with the same environment, like a container restart policy. Returns pids and timing."""
        with self._lock:  # held for kill + spawn only: two agents can restart at once
            if name not in self._launch:
                raise ReferenceDeploymentError(f"no agent named {name!r} in this deployment")
            argv, env, health = self._launch[name]
            old = self._procs.get(name)
            t0 = time.monotonic()
            if old is not None and old.popen.poll() is None:
                try:
                    os.killpg(old.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                old.popen.wait(timeout=5)
            new = self._spawn(name, argv, env=env, append_log=True, cwd=self.workdir)
        self._wait_ready({name: self._http_ok(health)})
        with self._lock:
            # keep the info objects truthful about which process serves the agent now
            import dataclasses

            if self.hardened is not None and self.hardened.name == name:
                self.hardened = dataclasses.replace(self.hardened, pid=new.pid)
            self.misconfigured = [dataclasses.replace(m, pid=new.pid) if m.name == name else m
                                  for m in self.misconfigured]
            if self.stock is not None and self.stock.name == name:
                self.stock = dataclasses.replace(self.stock, pid=new.pid)
            return {"agent": name, "old_pid": old.pid if old else None, "new_pid": new.pid,
                    "seconds": round(time.monotonic() - t0, 2)}

    def _start_control_watcher(self) -> None:
        """Serve restart requests from other processes (`python -m asap_runbook.reference --restart-agent`):
        a file control/restart-<name> asks, control/restart-<name>.done (JSON) answers."""
        self.control_dir.mkdir(parents=True, exist_ok=True)

        def serve(name: str) -> None:
            import json

            try:
                out = self.restart_agent(name)
                (self.control_dir / f"restart-{name}.done").write_text(json.dumps(out))
            except Exception as exc:  # noqa: BLE001 - reported to the requester
                (self.control_dir / f"restart-{name}.failed").write_text(str(exc).splitlines()[0][:300])

        def watch() -> None:
            while self._started and not self._stopping:
                for req in sorted(self.control_dir.glob("restart-*")):
                    if req.suffix in (".done", ".failed"):
                        continue
                    req.unlink(missing_ok=True)
                    # one thread per request: agents restart in parallel, like pods do
                    threading.Thread(target=serve, args=(req.name.removeprefix("restart-"),), daemon=True).start()
                # a restart takes seconds; polling 20 times a second cost the process hosting the deployment
                # (a benchmark's runner) ~2 % of a CPU
                time.sleep(0.2)

        self._control_thread = threading.Thread(target=watch, name="reference-control", daemon=True)
        self._control_thread.start()

    # ---------------------------------------------------------------- stop
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame):  # noqa: ANN001, ARG001
            if self._stopping:
                return
            raise SystemExit(128 + signum)

        try:
            self._prev_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            self._prev_sigterm = None

    def _restore_signal_handlers(self) -> None:
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            try:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
            except ValueError:
                pass
            self._prev_sigterm = None

    def _terminate(self, procs: list[_Proc], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        live = [p for p in procs if p.popen.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # pgid == pid (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                p.popen.wait(timeout=5)

    def stop(self) -> None:
        """Stop everything this deployment started (idempotent)."""
        with self._lock:
            if not self._started:
                return
            self._stopping = True
            t0 = time.monotonic()
            if self._control is not None:
                self._control.close()
                self._control = None
            try:
                # front to back: Prometheus and Alertmanager, nginx, agents, Redis -- all signalled at once
                order = sorted(
                    self._procs.values(),
                    key=lambda p: (0 if p.name in ("prometheus", "alertmanager") else 1 if p.name.endswith("-nginx")
                                   else 3 if p.name.endswith("redis") else 2),
                )
                self._terminate(order)
            finally:
                self._started = False
                self._restore_signal_handlers()
                self.shutdown_seconds = time.monotonic() - t0
