"""The one reader of the Kubernetes manifests an operator points at (`targets[].k8s_manifests`).

Plain YAML, no cluster access. It finds the workloads (Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob, Pod), their pod specs and containers (kept as the manifest's dicts),
and answers the questions the static checks ask: which probes hit which path and port, what
the termination grace period is, how long the agent process drains on SIGTERM, what the
container environment and resources set (Monitoring); replicas, HPAs with their metrics,
session affinity (`load_manifests()` -> `Manifests`, Scaling); and the one rule that counts
the processes serving a target, replicas x workers (`count_instances()`, Security and Scaling).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import _yaml
from .errors import RunbookError
from .source import CREDENTIAL_NAME

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
DEFAULT_GRACE_SECONDS = 30  # Kubernetes default terminationGracePeriodSeconds
GUNICORN_DEFAULT_GRACEFUL_TIMEOUT = 30
_AGENT_HINT = re.compile(r"uvicorn|gunicorn|hypercorn|asap", re.I)


class ManifestError(RunbookError):
    """A manifest file cannot be read as Kubernetes YAML."""


@dataclass(frozen=True)
class Document:
    source: Path
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", "?"))

    @property
    def where(self) -> str:
        return f"{self.source.name}: {self.kind}/{self.name}"


@dataclass(frozen=True)
class Workload:
    doc: Document
    pod_spec: dict

    @property
    def kind(self) -> str:
        return self.doc.kind

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def where(self) -> str:
        return self.doc.where

    @property
    def replicas(self) -> int | None:
        spec = self.doc.body.get("spec") or {}
        return spec.get("replicas", 1) if self.kind in ("Deployment", "StatefulSet", "ReplicaSet") else None

    def containers(self) -> list[dict]:
        return [c for c in self.pod_spec.get("containers") or [] if isinstance(c, dict)]

    def agent_containers(self) -> list[dict]:
        """Containers that look like the ASAP agent (uvicorn/gunicorn/asap in command, args or image);
        all containers when none does."""
        cs = self.containers()
        hits = [c for c in cs if _AGENT_HINT.search(" ".join(command_line(c)) + " " + str(c.get("image", "")))]
        return hits or cs

    @property
    def file(self) -> str:
        return self.doc.source.name

    @property
    def effective_replicas(self) -> int:
        return 1 if self.replicas is None else int(self.replicas)

    @property
    def volumes(self) -> list[dict]:
        return [v for v in self.pod_spec.get("volumes") or [] if isinstance(v, dict)]

    def as_dict(self) -> dict[str, Any]:
        """What the checks read of it; env values only for asap-protocol settings (see shown_setting)."""
        return {"kind": self.kind, "name": self.name, "file": self.file, "replicas": self.effective_replicas,
                "volumes": [{"name": v.get("name"), "type": next((k for k in v if k != "name"), None)}
                            for v in self.volumes],
                "containers": [{"name": c.get("name"), "resources": resources(c),
                                "env": {k: shown_setting(k, v) for k, v in env(c).items()}}
                               for c in self.containers()]}

    def grace_seconds(self) -> tuple[int, bool]:
        """(terminationGracePeriodSeconds, whether it was set explicitly)."""
        v = self.pod_spec.get("terminationGracePeriodSeconds")
        return (int(v), True) if isinstance(v, (int, float)) else (DEFAULT_GRACE_SECONDS, False)


def shown_setting(name: str, value: str) -> str:
    """An env value as an observation may show it: asap-protocol's ASAP_* settings (a URL without its
    user:password), nothing of credential-like or other variables (they may hold secrets)."""
    if not name.startswith("ASAP_") or CREDENTIAL_NAME.search(name):
        return "(set)"
    return re.sub(r"//[^/@]*@", "//***@", value)


def documents(paths: list[Path]) -> list[Document]:
    """Every YAML document of the files (a directory means its *.yaml / *.yml); `List` kinds are
    flattened. Raises ManifestError with one sentence on an unreadable file or invalid YAML."""
    out = []
    files = [f for p in paths for f in (sorted(Path(p).glob("*.y*ml")) if Path(p).is_dir() else [Path(p)])]
    for path in files:
        try:
            text = Path(path).read_text()
            docs = list(_yaml.safe_load_all(text))
        except OSError as e:
            raise ManifestError(f"cannot read Kubernetes manifest {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ManifestError(f"Kubernetes manifest {path} is not valid YAML{where}") from None
        for i, body in enumerate(docs):
            if isinstance(body, dict) and body.get("kind") == "List":
                out.extend(Document(Path(path), i, item) for item in body.get("items") or [] if isinstance(item, dict))
            elif isinstance(body, dict):
                out.append(Document(Path(path), i, body))
    return out


def pod_spec(body: dict) -> dict | None:
    kind = body.get("kind")
    spec = body.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    tmpl = spec.get("template") or {}
    return tmpl.get("spec") if isinstance(tmpl.get("spec"), dict) else None


def workloads(docs: list[Document]) -> list[Workload]:
    out = []
    for d in docs:
        if d.kind in WORKLOAD_KINDS:
            ps = pod_spec(d.body)
            if isinstance(ps, dict):
                out.append(Workload(d, ps))
    return out


# ----------------------------------------------------------------------------------- containers
def command_line(container: dict) -> list[str]:
    """command + args as one argv; `sh -c "..."` is split so flags inside it are seen."""
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c":
        try:
            return argv[:2] + shlex.split(argv[2]) + argv[3:]
        except ValueError:
            return argv
    return argv


def shell_wrapped(container: dict) -> bool:
    """`sh -c "uvicorn ..."` without `exec`: as PID 1 the shell receives SIGTERM and does not pass
    it on, so the agent never drains and is SIGKILLed when the grace period ends."""
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if len(argv) >= 3 and argv[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash", "ash") and argv[1] == "-c":
        return not argv[2].lstrip().startswith("exec ")
    return False


def env(container: dict) -> dict[str, str]:
    """The container's literal env values; values from secrets/config maps are shown as a reference."""
    out = {}
    for e in container.get("env") or []:
        if not isinstance(e, dict) or "name" not in e:
            continue
        if "value" in e:
            out[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            src = e["valueFrom"] or {}
            ref = next(iter(src), "valueFrom")
            out[e["name"]] = f"<from {ref}>"
    return out


@dataclass(frozen=True)
class HttpProbe:
    kind: str  # liveness | readiness | startup
    path: str | None
    port: Any
    scheme: str
    raw: dict


def probes(container: dict) -> dict[str, HttpProbe | None]:
    out: dict[str, HttpProbe | None] = {}
    for kind in ("liveness", "readiness", "startup"):
        p = container.get(f"{kind}Probe")
        if not isinstance(p, dict):
            out[kind] = None
            continue
        http = p.get("httpGet") or {}
        out[kind] = HttpProbe(kind, http.get("path") if http else None, http.get("port"),
                              str(http.get("scheme", "HTTP")), p)
    return out


def port_known(container: dict, port: Any) -> bool:
    ports = [p for p in container.get("ports") or [] if isinstance(p, dict)]
    if not ports:
        return True  # nothing declared: nothing to contradict
    return any(port == p.get("containerPort") or port == p.get("name") or str(port) == str(p.get("containerPort"))
               for p in ports)


def _flag(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def prestop_sleep_seconds(container: dict) -> float:
    cmd = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    text = " ".join(str(c) for c in cmd)
    m = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", text)
    if m:
        return float(m.group(1))
    sleep = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return float(sleep.get("seconds", 0)) if isinstance(sleep, dict) else 0.0


def drain_seconds(container: dict, process_config: Path | None = None) -> tuple[float | None, str]:
    """How long the agent process may take to finish in-flight requests after SIGTERM.

    Returns (seconds, how it was found); seconds is None when the drain is unbounded or unknown.
    """
    argv = command_line(container)
    text = " ".join(argv)
    if "gunicorn" in text:
        v = _flag(argv, "--graceful-timeout")
        if v:
            return float(v), f"gunicorn --graceful-timeout {v}"
        if process_config and Path(process_config).is_file():
            m = re.search(r"^\s*graceful_timeout\s*=\s*(\d+(?:\.\d+)?)", Path(process_config).read_text(), re.M)
            if m:
                return float(m.group(1)), f"graceful_timeout = {m.group(1)} in {Path(process_config).name}"
        return float(GUNICORN_DEFAULT_GRACEFUL_TIMEOUT), "gunicorn default graceful_timeout (30 s)"
    if "uvicorn" in text:
        v = _flag(argv, "--timeout-graceful-shutdown")
        if v:
            return float(v), f"uvicorn --timeout-graceful-shutdown {v}"
        return None, "uvicorn without --timeout-graceful-shutdown waits for in-flight requests without bound"
    return None, "no uvicorn/gunicorn command line found: drain time unknown"


# ----------------------------------------------------------------------------------- resources
def cpu_cores(value: Any) -> float | None:
    """Kubernetes CPU quantity -> cores: "500m" -> 0.5, "2" -> 2.0."""
    if value is None:
        return None
    s = str(value).strip()
    try:
        return float(s[:-1]) / 1000 if s.endswith("m") else float(s)
    except ValueError:
        return None


_MEM_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(value: Any) -> int | None:
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(value).strip())
    if not m:
        return None
    return int(float(m.group(1)) * _MEM_UNITS.get(m.group(2) or "", 1))


def resources(container: dict) -> dict[str, dict[str, Any]]:
    """{"requests": {...}, "limits": {...}} as written (missing parts are empty)."""
    r = container.get("resources") or {}
    return {k: dict(r.get(k) or {}) for k in ("requests", "limits")}


def cpu(container: dict) -> float | None:
    """The container's CPU in cores: its limit, else its request; None when neither is set."""
    r = resources(container)
    return cpu_cores(r["limits"].get("cpu")) or cpu_cores(r["requests"].get("cpu"))


# ----------------------------------------------------------------------------------- scaling view
SCALABLE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}  # what replicas/HPAs apply to


@dataclass
class Autoscaler:
    name: str
    file: str
    target_kind: str | None
    target_name: str | None
    min_replicas: int
    max_replicas: int | None
    metrics: list[str]                   # "cpu utilization 70%", "memory ...", "pods asap_requests_per_second"


@dataclass
class Manifests:
    files: list[str]
    workloads: list[Workload] = field(default_factory=list)       # the scalable ones
    autoscalers: list[Autoscaler] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)   # name, sessionAffinity
    ingresses: list[dict[str, Any]] = field(default_factory=list)  # name, affinity annotations
    other_kinds: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "workloads": [w.as_dict() for w in self.workloads],
                "autoscalers": [vars(a) for a in self.autoscalers], "session affinity": self.sticky(),
                "other kinds": self.other_kinds}

    def hpa_for(self, w: Workload) -> Autoscaler | None:
        return next((a for a in self.autoscalers if a.target_name == w.name and a.target_kind in (None, w.kind)), None)

    def sticky(self) -> list[str]:
        out = [f"Service {s['name']}: sessionAffinity {s['sessionAffinity']}" for s in self.services
               if s.get("sessionAffinity") not in (None, "None")]
        out += [f"Ingress {i['name']}: {k}={v}" for i in self.ingresses for k, v in i["affinity"].items()]
        return out


def _metric(m: dict) -> str:
    t = m.get("type", "?")
    if t == "Resource":
        r = m.get("resource", {})
        tgt = r.get("target", {})
        val = tgt.get("averageUtilization") or tgt.get("averageValue") or tgt.get("value")
        return f"{r.get('name', '?')} {tgt.get('type', '').lower()} {val}{'%' if 'averageUtilization' in tgt else ''}".strip()
    if t in ("Pods", "Object", "External"):
        body = m.get(t[0].lower() + t[1:], {})
        name = (body.get("metric") or {}).get("name") or body.get("metricName") or "?"
        return f"{t.lower()} {name}"
    return t


def load_manifests(paths: list[Path]) -> Manifests:
    """Parse the files; raise ManifestError with one sentence on unreadable or invalid YAML."""
    docs = documents(paths)
    out = Manifests(files=[str(p) for p in paths],
                    workloads=[w for w in workloads(docs) if w.kind in SCALABLE_KINDS])
    for doc in docs:
        kind, body = doc.kind, doc.body
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        if kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            metrics = [_metric(m) for m in spec.get("metrics") or [] if isinstance(m, dict)]
            if not metrics and spec.get("targetCPUUtilizationPercentage"):  # autoscaling/v1
                metrics = [f"cpu utilization {spec['targetCPUUtilizationPercentage']}%"]
            out.autoscalers.append(Autoscaler(
                name=doc.name, file=doc.source.name, target_kind=ref.get("kind"), target_name=ref.get("name"),
                min_replicas=int(spec.get("minReplicas") or 1), max_replicas=spec.get("maxReplicas"),
                metrics=metrics))
        elif kind == "Service":
            out.services.append({"name": doc.name, "sessionAffinity": spec.get("sessionAffinity")})
        elif kind == "Ingress":
            ann = meta.get("annotations") or {}
            out.ingresses.append({"name": doc.name, "affinity": {k: v for k, v in ann.items() if "affinity" in k}})
        elif kind and kind not in SCALABLE_KINDS:
            out.other_kinds.append(f"{kind} {doc.name}")
    return out


# ------------------------------------------------------------------------------------ instances
@dataclass
class Instances:
    """Processes serving one target: replicas x workers. `at_least` is always known (1 when nothing is
    said); `exact` is None when the files leave a factor open (the gunicorn formula follows the node's CPU
    count, an environment variable, no workers line)."""
    at_least: int
    exact: int | None
    how: str

    def as_dict(self) -> dict[str, Any]:
        return {"at_least": self.at_least, "exact": self.exact, "how": self.how}


def count_instances(declared: int, manifests: "Manifests | None", process: Any | None,
                    process_name: str | None = None) -> Instances:
    """The one rule both Security and Scaling use: replicas (the HPA's minimum if larger) x workers per pod
    (process_config), and never fewer than `targets[].instances`, which the operator declares.

    `process` is a source.ProcessConfig (or None when not given)."""
    parts = []
    replicas = 1
    if manifests is not None and manifests.workloads:
        w = manifests.workloads[0]
        hpa = manifests.hpa_for(w)
        replicas = max(w.effective_replicas, hpa.min_replicas if hpa else 0)
        parts.append(f"{replicas} replica(s) of {w.kind} {w.name}" + (f" (HPA {hpa.min_replicas}-{hpa.max_replicas})"
                                                                     if hpa else ""))
    if process is None:
        workers_low, workers = 1, None
        parts.append("workers per pod unknown (process_config not set)")
    else:
        workers = process.workers
        workers_low = workers if workers is not None else (process.workers_at(1) or 1)
        parts.append(process.describe() + (f" ({process_name})" if process_name else ""))
    exact_ok = workers is not None
    low = replicas * workers_low
    how = " x ".join(parts)
    if declared > low:
        return Instances(declared, declared, f"targets[].instances = {declared} (declared; the files give {how})")
    return Instances(low, low if exact_ok else None, how)


def target_instances(target: Any) -> Instances:
    """count_instances() for a params.Target, reading its k8s_manifests and process_config; a file that does
    not read is left out and named in `how` (the count is then a lower bound)."""
    from .source import read_process_config
    notes = []
    m = None
    if target.k8s_manifests:
        try:
            m = load_manifests(list(target.k8s_manifests))
        except (ManifestError, OSError) as e:
            notes.append(f"k8s_manifests unreadable: {e}")
    pc = None
    if target.process_config is not None:
        try:
            pc = read_process_config(target.process_config)
        except (OSError, SyntaxError, ValueError) as e:
            notes.append(f"process_config unreadable: {e}")
    n = count_instances(target.instances, m, pc, target.process_config.name if target.process_config else None)
    if notes:
        n = Instances(n.at_least, None, n.how + "; " + "; ".join(notes))
    return n
