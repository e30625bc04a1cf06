"""The parameters file: YAML, validated with pydantic before anything runs.

Parameters never hold a secret: a target names the *environment variable* that holds its
token (`token_env`). String values may refer to environment variables as `${NAME}` (or
`${NAME:-default}`), which is how `params/demo.yaml` points at a deployment whose ports are
chosen at start; do not interpolate secrets that way.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import _yaml
from .errors import ParamsError
from .pacing import parse_limits

SCHEMA_VERSION = 1
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    # pydantic's HttpUrl normalises (adds a trailing slash); keep what the operator wrote.
    m = re.fullmatch(r"(https?)://([^/\s:]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?(/\S*)?", value or "")
    if not m:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if m.group(3) and not 0 < int(m.group(3)[1:]) < 65536:
        raise ValueError(f"{value!r} has a port outside 1-65535")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class Threshold(_Model):
    value: float
    source: str = Field(description="where the number comes from, shown next to every finding that uses it")


def _t(value: float, source: str) -> Threshold:
    return Threshold(value=value, source=source)


class Thresholds(_Model):
    hsts_max_age_seconds: Threshold = _t(31536000, "production deployment checklist (Security > TLS and HTTPS)")
    cert_expiry_warn_days: Threshold = _t(30, "common renewal lead time (Let's Encrypt renews at 30 days)")
    cert_max_lifetime_days: Threshold = _t(398, "CA/Browser Forum baseline requirements (398 days)")
    token_min_lifetime_minutes: Threshold = _t(15, "production deployment checklist (Authentication: 15-60 min)")
    token_max_lifetime_minutes: Threshold = _t(60, "production deployment checklist (Authentication: 15-60 min)")
    max_request_size_bytes: Threshold = _t(10485760, "asap-protocol default (10 MiB); lower it for your payloads")
    rate_limit_max_per_second: Threshold = _t(100, "asap-runbook: 10x the checklist's example limit (10/second); set your per-caller peak plus headroom")
    error_rate_ratio: Threshold = _t(0.10, "production deployment checklist (Alerting: >10% for 5 min)")
    p99_latency_seconds: Threshold = _t(1.0, "production deployment checklist (Alerting: P99 > 1s)")
    manifest_cache_ttl_seconds: Threshold = _t(300, "production deployment checklist (Caching: e.g. 5 min)")
    workers_per_core_min: Threshold = _t(2, "production deployment checklist (Server: 2-4 per core)")
    workers_per_core_max: Threshold = _t(4, "production deployment checklist (Server: 2-4 per core)")
    client_timeout_max_seconds: Threshold = _t(30, "runbook default: well under the 60 s ASAPClient default and a proxy's 60 s read timeout")


class ActiveProbes(_Model):
    """Probes that send load or act on the target. Off unless enabled, per target.

    With all of them off the runbook is read-only: every envelope it sends is refused before any
    handler runs (see probe.probe_envelope)."""

    rate_limit_burst: bool = False
    oversize_body: bool = False
    drills: bool = False
    handler_probes: bool = Field(False, description="send input to the agent's declared skills: their handlers "
                                 "RUN (side effects included); SEC-HANDLER-1/-4 and MON-LOG-3 need it")
    max_requests: int = Field(40, ge=1, le=500, description="upper bound on requests one active probe may send")
    max_seconds: float = Field(20, gt=0, le=300, description="upper bound on the time one active probe may take")

    @property
    def any_enabled(self) -> bool:
        return self.rate_limit_burst or self.oversize_body or self.drills or self.handler_probes


class TaskTemplate(_Model):
    """One real request of the agent: a task.request with this skill and input. The text `{drill_id}`
    anywhere in the input is replaced by an id unique to the drill run."""

    skill: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)


class Drills(_Model):
    """Commands and requests a drill may use. Only for staging or the reference deployment."""

    dependency_stop: str | None = None
    dependency_start: str | None = None
    agent_start: str | None = Field(None, description="command that starts the agent in the foreground on "
                                    "127.0.0.1:$PORT (MON-HEALTH-4; RES-1..3 with downstream_env)")
    agent_restart: str | None = Field(None, description="command that kills the agent process and has it come back "
                                      "(RES-4); `{python}` is replaced by the runbook's interpreter")
    downstream_url: HttpUrl | None = Field(None, description="the agent's real downstream ASAP agent: the fault proxy "
                                           "forwards to it (RES-1..3)")
    downstream_task: TaskTemplate | None = Field(None, description="a real request that makes the agent call its "
                                                 "downstream (RES-1..3)")
    downstream_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                       description="the variable through which the agent reads its downstream's URL: "
                                       "the drill starts the agent with agent_start and this set to the fault proxy")
    fault_proxy_listen: str | None = Field(None, pattern=r"^[^\s:]+:\d{1,5}$",
                                           description="host:port the fault proxy binds to, when the staging agent "
                                           "already reaches its downstream through that address (no agent_start)")
    long_task: TaskTemplate | None = Field(None, description="a real long-running task (RES-4); its input should "
                                           "contain {drill_id} so each drill starts a new one")
    snapshot_task_id: str = Field("{drill_id}", description="the snapshot store's task id for long_task "
                                  "(e.g. report-{drill_id})")
    drain_seconds: float = Field(3.0, gt=0, le=60, description="how long MON-HEALTH-4 keeps its request in flight "
                                 "after SIGTERM (the body's last bytes are sent then)")


class Target(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    base_url: HttpUrl
    http_url: HttpUrl | None = Field(None, description="the plain-HTTP listener, for the redirect check")
    ca_file: Path | None = None
    tls_verify: bool = Field(True, description="false only to look past a broken certificate; the certificate check still judges it")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    sender: str = Field("urn:asap:agent:sre-probe", pattern=r"^urn:asap:agent:[a-z0-9-]+(?::[a-z0-9-]+)?$")
    groups: dict[str, str] = Field(default_factory=dict, description="e.g. {environment: prod, team: payments}")
    instances: int = Field(1, ge=1, description="replicas x workers serving this target")
    prometheus_job: str | None = None
    proxy_requests: str | None = Field(
        None, description="PromQL selector of the proxy's or ingress's request counter for this agent, e.g. "
                          "nginx_ingress_controller_requests{ingress=\"orders-agent\"}: where 429s and 413s are counted")
    proxy_status_label: str | None = Field(None, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
                                           description="its status-code label (default: the exporter's own, "
                                                       "e.g. status for ingress-nginx, code for Traefik)")
    app: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(\))?$", description="module:attribute of the agent's app")
    app_path: Path | None = None
    app_env: dict[str, str] = Field(default_factory=dict, description="NON-secret environment the app needs to import (introspection)")
    source_dir: Path | None = None
    nginx_conf: Path | None = None
    k8s_manifests: list[Path] = Field(default_factory=list)
    readiness_path: str | None = Field(None, pattern=r"^/[^\s]*$",
                                       description="the agent's readiness endpoint, when it is not the readinessProbe "
                                       "path of k8s_manifests (or, without them, asap-protocol's /ready)")
    process_config: Path | None = None
    log_file: Path | None = None
    log_command: str | None = None
    claims_require_nonce: bool = Field(False, description="the deployment claims to require a nonce on every envelope")
    rate_limit: str | None = Field(
        None, description="this agent's rate limit per client when it is not probe.rate_limit (e.g. '1000/second'); "
                          "its POSTs are paced under this one instead")
    active_probes: ActiveProbes = ActiveProbes()
    drills: Drills = Drills()

    @field_validator("rate_limit")
    @classmethod
    def _limits_parse(cls, value: str | None) -> str | None:
        return _rate_limit(value)

    @property
    def token(self) -> str | None:
        """The bearer token, read from the environment at the moment it is needed."""
        return os.environ.get(self.token_env) if self.token_env else None


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}


class FromEnv(_Model):
    """A value read from the environment variable `env` when it is used, so it never sits in a file."""

    env: EnvName


class BasicAuth(_Model):
    username: str = Field(min_length=1)
    password_env: EnvName = Field(description="the variable holding the password")


class HttpEndpoint(_Model):
    """How to reach an HTTP API the runbook reads (Prometheus, a rules API): its URL, path prefix
    included (https://host/prometheus), the credentials (read from environment variables the file
    names, at the moment they are used), the CA that signs its certificate, extra headers."""

    url: HttpUrl
    timeout_seconds: float = Field(5, gt=0, le=60)
    bearer_token_env: EnvName | None = Field(None, description="the variable holding a bearer token")
    basic_auth: BasicAuth | None = None
    ca_file: Path | None = Field(None, description="the CA certificate (PEM) its TLS certificate chains to")
    tls_verify: bool = Field(True, description="false only to look past a broken certificate")
    headers: dict[str, str | FromEnv] = Field(
        default_factory=dict, description="extra request headers, e.g. X-Scope-OrgID: team-a; a secret one as "
                                          "{env: NAME}")

    @field_validator("headers")
    @classmethod
    def _headers_ok(cls, headers: dict[str, str | FromEnv]) -> dict[str, str | FromEnv]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _CREDENTIAL_HEADERS and isinstance(value, str):
                raise ValueError(f"the {name} header carries a credential: give it as {{env: NAME}} "
                                 "(or use bearer_token_env / basic_auth), never in the file")
        return headers

    @model_validator(mode="after")
    def _one_auth(self) -> "HttpEndpoint":
        if self.bearer_token_env and self.basic_auth:
            raise ValueError("set bearer_token_env or basic_auth, not both")
        return self

    def env_names(self, where: str) -> list[tuple[str, str]]:
        """(variable, the parameter naming it) for every variable this endpoint reads."""
        out = [(self.bearer_token_env, f"{where}.bearer_token_env")] if self.bearer_token_env else []
        if self.basic_auth:
            out.append((self.basic_auth.password_env, f"{where}.basic_auth.password_env"))
        out += [(v.env, f"{where}.headers.{k}") for k, v in self.headers.items() if isinstance(v, FromEnv)]
        return out

    def unset_env(self, where: str) -> str | None:
        """One sentence naming the first variable this endpoint needs that is not set, or None."""
        unset = [(name, param) for name, param in self.env_names(where) if name not in os.environ]
        if not unset:
            return None
        names = ", ".join(f"{n} ({p})" for n, p in unset)
        return f"the environment variable{'s' if len(unset) > 1 else ''} {names} {'are' if len(unset) > 1 else 'is'} not set"

    def request_headers(self) -> dict[str, str]:
        """The headers to send, secrets read from the environment now (unset ones left out: see unset_env)."""
        out = {k: v if isinstance(v, str) else os.environ.get(v.env) for k, v in self.headers.items()}
        if self.bearer_token_env and os.environ.get(self.bearer_token_env):
            out["Authorization"] = f"Bearer {os.environ[self.bearer_token_env]}"
        return {k: v for k, v in out.items() if v is not None}

    def basic_credentials(self) -> tuple[str, str] | None:
        if self.basic_auth is None or self.basic_auth.password_env not in os.environ:
            return None
        return self.basic_auth.username, os.environ[self.basic_auth.password_env]

    @property
    def verify(self) -> bool | str:
        """What requests takes as `verify`: the CA file, else the system's trust store, or False."""
        return (str(self.ca_file) if self.ca_file else True) if self.tls_verify else False

    def credentials_hint(self, where: str) -> str | None:
        """Which credentials are configured (names only, never a value), for an error sentence; None: none."""
        if self.basic_auth:
            return f"basic auth as {self.basic_auth.username!r} ({where}.basic_auth)"
        if self.bearer_token_env:
            return f"the bearer token in {self.bearer_token_env} ({where}.bearer_token_env)"
        secret_headers = [k for k, v in self.headers.items() if isinstance(v, FromEnv)]
        if secret_headers:
            return f"the header(s) {', '.join(secret_headers)} ({where}.headers)"
        return None


class Prometheus(HttpEndpoint):
    """The Prometheus that scrapes the agents; its alerting rules come from it unless they live
    elsewhere: `rules_api` (a ruler with Prometheus's /api/v1/rules, e.g. Thanos, Mimir, Cortex,
    Grafana) or `rule_files` (files checked with promtool and read offline)."""

    window: str = Field("5m", pattern=r"^\d+[smh]$")
    rules_api: HttpEndpoint | None = Field(
        None, description="where the alerting rules are evaluated when not in this Prometheus: the base URL "
                          "under which /api/v1/rules answers, with its own credentials")
    rule_files: list[str] = Field(
        default_factory=list, description="rule files (paths or globs, relative to the parameters file) that hold "
                                          "the alerting rules, checked with promtool")

    @model_validator(mode="after")
    def _one_rules_source(self) -> "Prometheus":
        if self.rules_api is not None and self.rule_files:
            raise ValueError("set rules_api or rule_files, not both: the alerting rules are read from one place")
        return self

    def rule_file_paths(self) -> list[Path]:
        """rule_files with every glob expanded (sorted), each file once."""
        out: list[Path] = []
        for pattern in self.rule_files:
            for name in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
                if Path(name) not in out:
                    out.append(Path(name))
        return out

    def all_env_names(self) -> list[tuple[str, str]]:
        """env_names of this endpoint and of its rules_api."""
        return self.env_names("prometheus") + (self.rules_api.env_names("prometheus.rules_api") if self.rules_api else [])


class Alertmanager(_Model):
    """Where MON-ALERT-1..4 ask which receiver an alert is routed to. Without this block the runbook asks
    Prometheus which Alertmanager it sends alerts to (/api/v1/alertmanagers) and reads that one's
    configuration (/api/v2/status); `url` names the Alertmanager instead, `config_file` its configuration
    file (read locally, nothing contacted). Routing is Alertmanager's own: `amtool config routes test`."""
    url: HttpUrl | None = Field(None, description="the Alertmanager whose loaded configuration routes the alerts")
    config_file: Path | None = Field(None, description="alertmanager.yml as deployed; wins over url")
    timeout_seconds: float = Field(5, gt=0, le=60)


class ProbeSettings(_Model):
    timeout_seconds: float = Field(5, gt=0, le=120)
    max_response_bytes: int = Field(1_048_576, ge=1024)
    concurrency: int = Field(8, ge=1, le=64, description="checks in flight at once, per target")
    max_requests_per_target: int = Field(
        1000, ge=1, le=100_000,
        description="upper bound on the requests one section sends to one target; beyond it a check ends in error")
    max_targets_in_parallel: int = Field(32, ge=1, le=512, description="targets probed at once, per section")
    rate_limit: str | None = Field(
        "10/second;100/minute",
        description="the agents' rate limit per client (asap-protocol's default); POSTs are paced under it, per host, "
                    "across every section; null turns pacing off (a 429's Retry-After is still honoured)")
    max_rate_limit_wait_seconds: float = Field(
        75, ge=0, le=3600,
        description="longest wait for one request's slot or a 429's Retry-After; beyond it the check ends in error")

    @field_validator("rate_limit")
    @classmethod
    def _limits_parse(cls, value: str | None) -> str | None:
        return _rate_limit(value)


def _rate_limit(value: str | None) -> str | None:
    if value is not None and (not parse_limits(value) or any(n < 1 for n, _ in parse_limits(value))):
        raise ValueError(f"{value!r} is not a rate limit such as '10/second;100/minute'")
    return value


class Params(_Model):
    schema_version: Literal[1] = 1
    environment: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    targets: list[Target] = Field(min_length=1)
    prometheus: Prometheus | None = None
    alertmanager: Alertmanager | None = None
    thresholds: Thresholds = Thresholds()
    probe: ProbeSettings = ProbeSettings()
    confirmations_file: Path | None = None
    waivers_file: Path | None = None

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[Target]) -> list[Target]:
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dupes)}")
        return targets

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"no target named {name!r}")


Loc = tuple[str | int, ...]


def _where(loc: Loc) -> str:
    """('targets', 0, 'base_url') -> 'targets[0].base_url'"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a parameters file, and where (1-based YAML line and column, when known).
    With an empty `loc` the message is about the whole file and follows its name ("does not exist")."""

    loc: Loc
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        at = f"line {self.line}, column {self.column}: " if self.line else ""
        return f"{at}{self.message}"


def _interpolate(node: Any, loc: Loc, problems: list[Problem]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, (*loc, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(Problem(loc, f"{_where(loc)} refers to ${{{name}}}, which is not set in the environment"))
            return m.group(0)
        return _ENV_REF.sub(sub, node)
    return node


_TARGET_PATHS = ("ca_file", "app_path", "source_dir", "nginx_conf", "process_config", "log_file")
_MUST_EXIST = ("ca_file", "app_path", "source_dir", "nginx_conf", "process_config", "k8s_manifests")  # a log may come later


def _map_paths(data: dict, fix) -> None:
    """Apply `fix` to every path the parameters hold (in place)."""
    for key in ("confirmations_file", "waivers_file"):
        if key in data:
            data[key] = fix(data[key])
    am = data.get("alertmanager")
    if isinstance(am, dict) and "config_file" in am:
        am["config_file"] = fix(am["config_file"])
    for t in data.get("targets") or []:
        if not isinstance(t, dict):
            continue
        for key in _TARGET_PATHS:
            if key in t:
                t[key] = fix(t[key])
        if isinstance(t.get("k8s_manifests"), list):
            t["k8s_manifests"] = [fix(v) for v in t["k8s_manifests"]]
    prom = data.get("prometheus")
    if isinstance(prom, dict):
        for endpoint in (prom, prom.get("rules_api")):
            if isinstance(endpoint, dict) and "ca_file" in endpoint:
                endpoint["ca_file"] = fix(endpoint["ca_file"])
        if isinstance(prom.get("rule_files"), list):
            prom["rule_files"] = [fix(v) for v in prom["rule_files"]]


def _absolute(base: Path):
    def fix(v):
        return str((base / v).resolve()) if isinstance(v, str) and v and not os.path.isabs(v) else v
    return fix


def _resolve_paths(data: dict, base: Path) -> None:
    """Make relative paths relative to the params file, so a run works from any directory."""
    # one confirmations file per environment, beside the params file unless named
    data.setdefault("confirmations_file", f"confirmations/{data.get('environment') or 'default'}.yaml")
    _map_paths(data, _absolute(base))


def portable_params(src: str | os.PathLike, without: tuple[str, ...] = ()) -> dict:
    """The parameters file as data, its relative paths made absolute (`${NAME}` values stay as
    written: they are resolved where the parameters are loaded)."""
    src = Path(src).resolve()
    data = {k: v for k, v in yaml.safe_load(src.read_text()).items() if k not in without}
    fix = _absolute(src.parent)
    _map_paths(data, lambda v: v if isinstance(v, str) and "${" in v else fix(v))
    return data


def copy_params(src: str | os.PathLike, dest: str | os.PathLike, why: str, without: tuple[str, ...] = ()) -> Path:
    """Copy a parameters file to `dest`, its relative paths made absolute so it means the same there,
    minus the top-level keys `without`. `${NAME}` values stay as written; the confirmations file (unless
    named) is the copy's own, beside it. The demo runs the packaged parameters this way when installed,
    so nothing is written into the installed package."""
    src, dest = Path(src).resolve(), Path(dest)
    data = portable_params(src, without)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"# {why}\n# copied from {src} (relative paths made absolute)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return dest


def _missing_files(data: dict, skip: set[Loc]) -> list[Problem]:
    """Files the targets name that are not there (checked on the raw data, so they are reported
    alongside every other problem; `skip`: locations already reported, e.g. an unset ${NAME})."""
    out = []
    am = data.get("alertmanager")
    am_file = am.get("config_file") if isinstance(am, dict) else None
    loc = ("alertmanager", "config_file")
    if isinstance(am_file, str) and am_file and loc not in skip and not Path(am_file).exists():
        out.append(Problem(loc, f"alertmanager.config_file: {am_file} does not exist"))
    targets = data.get("targets")
    for i, t in enumerate(targets if isinstance(targets, list) else []):
        if not isinstance(t, dict):
            continue
        paths = [((key,), t.get(key)) for key in _MUST_EXIST if key != "k8s_manifests"]
        if isinstance(t.get("k8s_manifests"), list):
            paths += [(("k8s_manifests", j), v) for j, v in enumerate(t["k8s_manifests"])]
        for sub, value in paths:
            loc = ("targets", i, *sub)
            if isinstance(value, str) and value and loc not in skip and not Path(value).exists():
                out.append(Problem(loc, f"targets[{t.get('name', i)}].{sub[0]}: {value} does not exist"))
    return out + _missing_prometheus_files(data.get("prometheus"), skip)


def _missing_prometheus_files(prom: Any, skip: set[Loc]) -> list[Problem]:
    """CA files that are not there; rule files that are not there, or globs that match no file
    (Prometheus would load nothing from them, silently)."""
    if not isinstance(prom, dict):
        return []
    out = []
    for sub, endpoint in ((("prometheus",), prom), (("prometheus", "rules_api"), prom.get("rules_api"))):
        value = endpoint.get("ca_file") if isinstance(endpoint, dict) else None
        loc = (*sub, "ca_file")
        if isinstance(value, str) and value and loc not in skip and not Path(value).exists():
            out.append(Problem(loc, f"{_where(loc)}: {value} does not exist"))
    files = prom.get("rule_files")
    for j, value in enumerate(files if isinstance(files, list) else []):
        loc = ("prometheus", "rule_files", j)
        if not isinstance(value, str) or not value or loc in skip:
            continue
        if glob.has_magic(value):
            if not glob.glob(value):
                out.append(Problem(loc, f"{_where(loc)}: {value} matches no file"))
        elif not Path(value).is_file():
            out.append(Problem(loc, f"{_where(loc)}: {value} does not exist"))
    return out


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc` (for "did you mean")."""
    model: type[BaseModel] | None = Params
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (m := _inner_model(arg)) is not None:
            return m
    return None


def _did_you_mean(key: str, model: type[BaseModel] | None) -> str:
    """A near spelling in the same mapping, a name that the key is part of (`url` -> `base_url`), or
    the place where that key does belong (`timeout_seconds` -> `probe.timeout_seconds`)."""
    here = list(model.model_fields) if model else []
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.6)
    if not close:
        close = [f for f in here if key in f.split("_")]
    if close:
        return f"; did you mean {close[0]!r}?"
    paths = _field_paths(Params)
    elsewhere = difflib.get_close_matches(key, list(paths), n=1, cutoff=0.8)
    return f"; not a key here (did you mean {' or '.join(paths[elsewhere[0]])}?)" if elsewhere else ""


def _field_paths(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Every key of the params, by name, with the dotted paths it lives at."""
    out: dict[str, list[str]] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.setdefault(name, []).append(path)
        inner = _inner_model(field.annotation)
        if inner is not None and inner is not model:
            for k, v in _field_paths(inner, f"{path}[]." if _is_list(field.annotation) else f"{path}.").items():
                out.setdefault(k, []).extend(v)
    return out


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list or any(_is_list(a) for a in get_args(annotation))


def _validation_problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(str(loc[-1]), _model_at(loc[:-1]))
            out.append(Problem(loc, f"unknown key {_where(loc)}{hint}"))
        elif err["type"] == "missing":
            out.append(Problem(loc, f"missing required key {_where(loc)}"))
        else:
            out.append(Problem(loc, f"{_where(loc)}: {err['msg'].removeprefix('Value error, ')}"))
    return out


def _position(root: yaml.Node | None, problem: Problem) -> Problem:
    """The problem with the line and column of the YAML node its location names (or of the nearest
    enclosing node: a missing key points at the mapping that lacks it)."""
    node, mark = root, root.start_mark if root is not None else None
    for part in problem.loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if pair is None:
                break
            # an unknown key is shown at the key; anything else at its value
            node, mark = pair[1], (pair[0] if problem.message.startswith("unknown key") else pair[1]).start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    if mark is None:
        return problem
    return Problem(problem.loc, problem.message, mark.line + 1, mark.column + 1)


def check_params(path: str | os.PathLike) -> tuple[Params | None, list[Problem]]:
    """Read, interpolate and validate a parameters file without touching any target: the parameters
    (None when invalid) and every problem found, each with its YAML line and column when known."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, [Problem((), "does not exist")]
    except OSError as e:
        return None, [Problem((), f"cannot be read: {e.strerror}")]
    try:
        try:  # libyaml when present: a fleet's file is read by the runner and every kernel (~2 ms a target in Python)
            data = _yaml.safe_load(text)
        except yaml.YAMLError:
            data = yaml.safe_load(text)  # the pure-Python parser says what is wrong and where, in its own words
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        why = getattr(e, "problem", None) or "it cannot be parsed"
        return None, [Problem((), f"is not valid YAML ({why})", *((mark.line + 1, mark.column + 1) if mark else ()))]
    if not isinstance(data, dict):
        return None, [Problem((), "must be a mapping with a 'targets' list")]
    problems: list[Problem] = []
    data = _interpolate(data, (), problems)
    unset = {p.loc for p in problems}  # an unset ${NAME} is one problem, not also a malformed value
    _resolve_paths(data, path.resolve().parent)
    params = None
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        problems += [p for p in _validation_problems(e) if p.loc not in unset]
    problems += _missing_files(data, unset)
    if problems:  # the nodes' lines and columns, only when there is something to point at
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        problems = sorted((_position(root, p) for p in problems), key=lambda p: (p.line or 0, p.column or 0))
    return (params if not problems else None), problems


def load_params(path: str | os.PathLike) -> Params:
    """Read, interpolate and validate a parameters file; raise ParamsError naming every problem."""
    params, problems = check_params(path)
    if not problems:
        return params
    if len(problems) > 1:
        raise ParamsError(f"Parameters file {path} has {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))
    p = problems[0]
    if p.loc:
        raise ParamsError(f"Parameters file {path}, {p}.")
    at = f" at line {p.line}, column {p.column}" if p.line else ""
    raise ParamsError(f"Parameters file {path} {p.message}{at}.")


def params_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the parameters file as written (it holds no secret)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
