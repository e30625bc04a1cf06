"""A small reader for the Kubernetes manifests an operator points at (`targets[].k8s_manifests`).

Plain YAML, no cluster access. It finds the workloads (Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob, Pod), their pod specs and containers, and answers the questions the
static checks ask: which probes hit which path and port, what the termination grace period is,
how long the agent process drains on SIGTERM, what the container environment sets. Other
sections read replicas, HPAs and resources through `documents()` / `workloads()`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import RunbookError

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

    def grace_seconds(self) -> tuple[int, bool]:
        """(terminationGracePeriodSeconds, whether it was set explicitly)."""
        v = self.pod_spec.get("terminationGracePeriodSeconds")
        return (int(v), True) if isinstance(v, (int, float)) else (DEFAULT_GRACE_SECONDS, False)


def documents(paths: list[Path]) -> list[Document]:
    """Every YAML document of the files (a directory means its *.yaml / *.yml); `List` kinds are
    flattened. Raises ManifestError with one sentence on an unreadable file or invalid YAML."""
    out = []
    files = [f for p in paths for f in (sorted(Path(p).glob("*.y*ml")) if Path(p).is_dir() else [Path(p)])]
    for path in files:
        try:
            text = Path(path).read_text()
            docs = list(yaml.safe_load_all(text))
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


def of_kind(docs: list[Document], kind: str) -> list[Document]:
    return [d for d in docs if d.kind == kind]


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
