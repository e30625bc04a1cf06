"""The parameters file: YAML, validated with pydantic before anything runs.

Parameters never hold a secret: a target names the *environment variable* that holds its
token (`token_env`). String values may refer to environment variables as `${NAME}` (or
`${NAME:-default}`), which is how `params/demo.yaml` points at a deployment whose ports are
chosen at start; do not interpolate secrets that way.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

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


class Drills(_Model):
    """Commands a drill may run. Only for staging or the reference deployment."""

    dependency_stop: str | None = None
    dependency_start: str | None = None
    agent_start: str | None = None
    agent_restart: str | None = Field(None, description="command that kills the agent process and has it come back "
                                      "(RES-4); `{python}` is replaced by the runbook's interpreter")
    downstream_url: HttpUrl | None = Field(None, description="a downstream ASAP agent the fault proxy forwards to (RES-1..3)")


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
    app: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(\))?$", description="module:attribute of the agent's app")
    app_path: Path | None = None
    app_env: dict[str, str] = Field(default_factory=dict, description="NON-secret environment the app needs to import (introspection)")
    source_dir: Path | None = None
    nginx_conf: Path | None = None
    k8s_manifests: list[Path] = Field(default_factory=list)
    process_config: Path | None = None
    log_file: Path | None = None
    log_command: str | None = None
    claims_require_nonce: bool = Field(False, description="the deployment claims to require a nonce on every envelope")
    active_probes: ActiveProbes = ActiveProbes()
    drills: Drills = Drills()

    @property
    def token(self) -> str | None:
        """The bearer token, read from the environment at the moment it is needed."""
        return os.environ.get(self.token_env) if self.token_env else None


class Prometheus(_Model):
    url: HttpUrl
    timeout_seconds: float = Field(5, gt=0, le=60)
    window: str = Field("5m", pattern=r"^\d+[smh]$")


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
        if value is not None and (not parse_limits(value) or any(n < 1 for n, _ in parse_limits(value))):
            raise ValueError(f"{value!r} is not a rate limit such as '10/second;100/minute'")
        return value


class Params(_Model):
    schema_version: Literal[1] = 1
    environment: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    targets: list[Target] = Field(min_length=1)
    prometheus: Prometheus | None = None
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


def _interpolate(node: Any, where: str) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ParamsError(f"{where} refers to ${{{name}}}, which is not set in the environment.")
        return _ENV_REF.sub(sub, node)
    return node


def _resolve_paths(data: dict, base: Path) -> None:
    """Make relative paths relative to the params file, so a run works from any directory."""
    def fix(v):
        return str((base / v).resolve()) if isinstance(v, str) and v and not os.path.isabs(v) else v
    # one confirmations file per environment, beside the params file unless named
    data.setdefault("confirmations_file", f"confirmations/{data.get('environment') or 'default'}.yaml")
    for key in ("confirmations_file", "waivers_file"):
        if key in data:
            data[key] = fix(data[key])
    for t in data.get("targets") or []:
        if not isinstance(t, dict):
            continue
        for key in ("ca_file", "app_path", "source_dir", "nginx_conf", "process_config", "log_file"):
            if key in t:
                t[key] = fix(t[key])
        if isinstance(t.get("k8s_manifests"), list):
            t["k8s_manifests"] = [fix(v) for v in t["k8s_manifests"]]


def _check_files(params: Params) -> None:
    for t in params.targets:
        for key in ("ca_file", "app_path", "source_dir", "nginx_conf", "process_config"):
            p = getattr(t, key)
            if p is not None and not p.exists():
                raise ParamsError(f"targets[{t.name}].{key}: {p} does not exist.")
        for p in t.k8s_manifests:
            if not p.exists():
                raise ParamsError(f"targets[{t.name}].k8s_manifests: {p} does not exist.")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"missing required key {loc!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def load_params(path: str | os.PathLike) -> Params:
    """Read, interpolate and validate a parameters file; raise ParamsError with one sentence."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"Parameters file {path} does not exist.") from None
    except OSError as e:
        raise ParamsError(f"Parameters file {path} cannot be read: {e.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"Parameters file {path} is not valid YAML{where}.") from None
    if not isinstance(data, dict):
        raise ParamsError(f"Parameters file {path} must be a mapping with a 'targets' list.")
    data = _interpolate(data, "")
    _resolve_paths(data, path.resolve().parent)
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(f"Parameters file {path}: {_first_error(e)}.") from None
    _check_files(params)
    return params


def params_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the parameters file as written (it holds no secret)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
