"""The Scaling view of the Kubernetes manifests (read with :func:`asap_runbook.k8s.documents`):
workloads, autoscalers, services, ingresses.

Only what the Scaling items need: replicas, container resources, probes, environment (plain
`value:` entries; `valueFrom` references are named, never resolved), volumes, HPAs with their
metrics, and session affinity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .k8s import ManifestError, documents, pod_spec

__all__ = ["ManifestError", "Manifests", "load_manifests", "cpu_cores", "memory_bytes"]

SCALABLE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}  # what replicas/HPAs apply to


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


@dataclass
class Container:
    name: str
    image: str | None
    command: list[str]
    resources: dict[str, dict[str, Any]]
    probes: dict[str, Any]               # livenessProbe / readinessProbe / startupProbe -> spec
    env: dict[str, str]                  # plain values
    env_refs: dict[str, str]             # name -> "secretKeyRef secret/key" etc.
    mounts: list[dict[str, Any]]

    @property
    def cpu_limit(self) -> float | None:
        return cpu_cores(self.resources.get("limits", {}).get("cpu"))

    @property
    def cpu_request(self) -> float | None:
        return cpu_cores(self.resources.get("requests", {}).get("cpu"))


@dataclass
class Workload:
    kind: str
    name: str
    file: str
    replicas: int | None                 # None: not set (Kubernetes default 1)
    containers: list[Container]
    volumes: list[dict[str, Any]]

    @property
    def effective_replicas(self) -> int:
        return 1 if self.replicas is None else self.replicas


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
    workloads: list[Workload] = field(default_factory=list)
    autoscalers: list[Autoscaler] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)   # name, sessionAffinity
    ingresses: list[dict[str, Any]] = field(default_factory=list)  # name, affinity annotations
    other_kinds: list[str] = field(default_factory=list)

    def hpa_for(self, w: Workload) -> Autoscaler | None:
        return next((a for a in self.autoscalers if a.target_name == w.name and a.target_kind in (None, w.kind)), None)

    def sticky(self) -> list[str]:
        out = [f"Service {s['name']}: sessionAffinity {s['sessionAffinity']}" for s in self.services
               if s.get("sessionAffinity") not in (None, "None")]
        out += [f"Ingress {i['name']}: {k}={v}" for i in self.ingresses for k, v in i["affinity"].items()]
        return out


def _container(c: dict) -> Container:
    env, refs = {}, {}
    for e in c.get("env") or []:
        if not isinstance(e, dict) or "name" not in e:
            continue
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif isinstance(e.get("valueFrom"), dict):
            kind, ref = next(iter(e["valueFrom"].items()), ("valueFrom", {}))
            refs[e["name"]] = f"{kind} {ref.get('name', '')}/{ref.get('key', '')}" if isinstance(ref, dict) else kind
    return Container(
        name=str(c.get("name", "")), image=c.get("image"),
        command=[str(x) for x in (c.get("command") or []) + (c.get("args") or [])],
        resources={k: dict(v or {}) for k, v in (c.get("resources") or {}).items()},
        probes={k: c[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if c.get(k)},
        env=env, env_refs=refs, mounts=list(c.get("volumeMounts") or []),
    )


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
    out = Manifests(files=[str(p) for p in paths])
    for doc in documents(paths):
        kind, meta, body = doc.kind, doc.body.get("metadata") or {}, doc.body
        name, spec, fname = doc.name, body.get("spec") or {}, doc.source.name
        if kind in SCALABLE_KINDS:
            pod = pod_spec(body) or {}
            out.workloads.append(Workload(
                kind=kind, name=name, file=fname,
                replicas=spec.get("replicas") if isinstance(spec.get("replicas"), int) else None,
                containers=[_container(c) for c in pod.get("containers") or [] if isinstance(c, dict)],
                volumes=list(pod.get("volumes") or [])))
        elif kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            metrics = [_metric(m) for m in spec.get("metrics") or [] if isinstance(m, dict)]
            if not metrics and spec.get("targetCPUUtilizationPercentage"):  # autoscaling/v1
                metrics = [f"cpu utilization {spec['targetCPUUtilizationPercentage']}%"]
            out.autoscalers.append(Autoscaler(
                name=name, file=fname, target_kind=ref.get("kind"), target_name=ref.get("name"),
                min_replicas=int(spec.get("minReplicas") or 1), max_replicas=spec.get("maxReplicas"),
                metrics=metrics))
        elif kind == "Service":
            out.services.append({"name": name, "sessionAffinity": spec.get("sessionAffinity")})
        elif kind == "Ingress":
            ann = meta.get("annotations") or {}
            out.ingresses.append({"name": name, "affinity": {k: v for k, v in ann.items() if "affinity" in k}})
        elif kind:
            out.other_kinds.append(f"{kind} {name}")
    return out


# environment variables that say where per-process state lives (reference §8)
STATE_ENV = {
    "ASAP_RATE_LIMIT_BACKEND": "rate limits",
    "ASAP_STORAGE_BACKEND": "snapshots",
    "ASAP_STORAGE_PATH": "snapshots (SQLite file)",
}


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
