"""Reading an agent's source and process configuration without importing or running it."""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "site-packages", ".tox"}


def skipped_dir(path: Path, root: Path) -> bool:
    """Under a virtualenv, VCS or cache directory *inside* root (root itself may live in site-packages)."""
    return bool(_SKIP_DIRS.intersection(path.relative_to(root).parts))


def python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if not skipped_dir(p, root))


def _literal(node: ast.AST) -> Any:
    """A literal value, a nested call as {"__call__": name, **kwargs}, or the source text."""
    if isinstance(node, ast.Call):
        return {"__call__": _name(node.func), **{k.arg: _literal(k.value) for k in node.keywords if k.arg}}
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return ast.unparse(node)


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ast.unparse(func)


@dataclass
class CallSite:
    file: str
    line: int
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def find_calls(root: Path, names: set[str]) -> tuple[list[CallSite], list[str]]:
    """Every call to one of `names` in the tree, with its keyword arguments; plus files that did not parse."""
    sites, broken = [], []
    for path in python_files(root):
        try:
            tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
        except SyntaxError:
            broken.append(str(path))
            continue
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) in names:
                sites.append(CallSite(rel, node.lineno, _name(node.func),
                                      {k.arg: _literal(k.value) for k in node.keywords if k.arg}))
    return sites, broken


@dataclass
class ProcessConfig:
    server: str          # "gunicorn" | "uvicorn" | "unknown"
    workers: int | None
    worker_class: str | None
    source: str


def read_process_config(path: Path) -> ProcessConfig:
    """A gunicorn config file (*.py) or a file holding the server's command line."""
    text = path.read_text()
    if path.suffix == ".py":
        values: dict[str, Any] = {}
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = _literal(node.value)
        workers = values.get("workers")
        return ProcessConfig("gunicorn", workers if isinstance(workers, int) else None,
                             values.get("worker_class"), f"{path.name}: workers = {workers!r}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    argv = shlex.split(" ".join(ln.rstrip("\\") for ln in lines))
    server = next((s for s in ("gunicorn", "uvicorn") if any(a.endswith(s) for a in argv)), "unknown")
    workers, worker_class = (1 if server == "uvicorn" else None), None
    for i, a in enumerate(argv):
        for flag in ("--workers", "-w"):
            if a == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                workers = int(argv[i + 1])
            elif a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                workers = int(a.split("=", 1)[1])
        if a in ("-k", "--worker-class") and i + 1 < len(argv):
            worker_class = argv[i + 1]
    return ProcessConfig(server, workers, worker_class, " ".join(argv))


# ---------------------------------------------------------------------------------------------
# How the agent builds and uses its ASAPClients (SCALE-CLIENT-*, SCALE-SERVER-3, SCALE-CACHE-*, RES-*)
# ---------------------------------------------------------------------------------------------
# Library defaults of asap-protocol 2.5.10, read from asap/transport/client/_helpers.py,
# asap/models/constants.py and asap/transport/cache.py (reference §3.1, §3.3).
CLIENT_DEFAULTS: dict[str, Any] = {
    "timeout": 60.0, "pool_connections": 100, "pool_maxsize": 100, "pool_timeout": 5.0,
    "compression": True, "compression_threshold": 1024, "max_retries": 3, "base_delay": 1.0,
    "max_delay": 60.0, "jitter": True, "circuit_breaker_enabled": False, "circuit_breaker_threshold": 5,
    "circuit_breaker_timeout": 60.0, "manifest_cache_size": 1000, "MANIFEST_REQUEST_TIMEOUT": 10.0,
    "ManifestCache.default_ttl": 300.0,
}
PRIVATE_CLIENT_CONSTANTS = {"DEFAULT_POOL_MAXSIZE", "DEFAULT_POOL_CONNECTIONS", "DEFAULT_POOL_TIMEOUT",
                            "MANIFEST_REQUEST_TIMEOUT", "DEFAULT_TIMEOUT", "DEFAULT_MAX_RETRIES"}
FALLBACK_ERRORS = {"CircuitOpenError", "ASAPConnectionError", "ASAPTimeoutError", "ASAPRemoteError", "ASAPError"}
_CACHING_DECORATORS = {"cache", "lru_cache", "cached", "cached_property", "alru_cache"}
_LONG_LIVED_FUNCS = ("__init__", "lifespan", "startup", "on_startup", "setup")


@dataclass
class ClientSite:
    """One `ASAPClient(...)` construction and where it lives."""
    file: str
    line: int
    kwargs: dict[str, Any]
    scope: str             # "module" or "function <name>"
    long_lived: bool       # built once (module level, cached factory, __init__/lifespan)
    why: str               # how long_lived was decided
    in_loop: bool

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def setting(self, name: str) -> tuple[Any, bool]:
        """(value, explicit): the effective value of a client setting and whether the code set it."""
        rc = self.kwargs.get("retry_config")
        if isinstance(rc, dict) and rc.get("__call__") == "RetryConfig" and name in (
                "max_retries", "base_delay", "max_delay", "jitter", "circuit_breaker_enabled",
                "circuit_breaker_threshold", "circuit_breaker_timeout"):
            return (rc[name], True) if name in rc else (CLIENT_DEFAULTS[name], False)
        if name in self.kwargs:
            return self.kwargs[name], True
        return CLIENT_DEFAULTS.get(name), False

    def summary(self) -> dict[str, Any]:
        return {"at": self.where(), "scope": self.scope, "long_lived": self.long_lived, "why": self.why,
                "in_loop": self.in_loop, "kwargs": self.kwargs}


@dataclass
class ClientUsage:
    root: str
    clients: list[ClientSite] = field(default_factory=list)
    manifest_caches: list[CallSite] = field(default_factory=list)        # ManifestCache(...)
    manifest_lookups: list[CallSite] = field(default_factory=list)       # .get_manifest( / .discover(
    raw_manifest_fetches: list[str] = field(default_factory=list)        # "/.well-known/asap/manifest.json" literals
    private_constant_writes: list[dict] = field(default_factory=list)    # DEFAULT_POOL_* = ..., setattr(...)
    fallbacks: list[dict] = field(default_factory=list)                  # except CircuitOpenError/...: <not just raise>
    unparsed: list[str] = field(default_factory=list)


def _decorator_names(fn: ast.AST) -> set[str]:
    names = set()
    for d in getattr(fn, "decorator_list", []):
        target = d.func if isinstance(d, ast.Call) else d
        names.add(_name(target))
    return names


def _exc_names(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, ast.Tuple):
        return {n for e in node.elts for n in _exc_names(e)}
    return {_name(node)}


class _Walker(ast.NodeVisitor):
    def __init__(self, rel: str, usage: ClientUsage):
        self.rel, self.usage = rel, usage
        self.funcs: list[ast.AST] = []
        self.loops = 0

    def _visit_func(self, node):
        self.funcs.append(node)
        saved, self.loops = self.loops, 0
        self.generic_visit(node)
        self.loops = saved
        self.funcs.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_func

    def _visit_loop(self, node):
        self.loops += 1
        self.generic_visit(node)
        self.loops -= 1

    visit_For = visit_AsyncFor = visit_While = _visit_loop

    def visit_Call(self, node: ast.Call):
        name = _name(node.func)
        kwargs = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
        if name == "ASAPClient":
            if not self.funcs:
                long_lived, why, scope = True, "built at module level", "module"
            else:
                fn = self.funcs[-1]
                scope = f"function {fn.name}"
                cached = _decorator_names(fn) & _CACHING_DECORATORS
                if cached:
                    long_lived, why = True, f"built in {fn.name}(), which is memoised (@{sorted(cached)[0]})"
                elif any(f.name.startswith(_LONG_LIVED_FUNCS) for f in self.funcs):
                    long_lived, why = True, f"built in {fn.name}(), run once at start-up"
                else:
                    long_lived, why = False, f"built inside {fn.name}(): a new client (pool, manifest cache) per call"
            self.usage.clients.append(ClientSite(self.rel, node.lineno, kwargs, scope, long_lived, why, self.loops > 0))
        elif name == "ManifestCache":
            self.usage.manifest_caches.append(CallSite(self.rel, node.lineno, name, kwargs))
        elif name in ("get_manifest", "discover") and isinstance(node.func, ast.Attribute):
            self.usage.manifest_lookups.append(CallSite(self.rel, node.lineno, name, kwargs))
        elif name == "setattr" and len(node.args) >= 2:
            attr = _literal(node.args[1])
            if attr in PRIVATE_CLIENT_CONSTANTS:
                self.usage.private_constant_writes.append(
                    {"at": f"{self.rel}:{node.lineno}", "name": attr, "code": ast.unparse(node)})
        self.generic_visit(node)

    def _assign_targets(self, targets, node):
        for t in targets:
            tname = _name(t) if isinstance(t, (ast.Name, ast.Attribute)) else None
            if tname in PRIVATE_CLIENT_CONSTANTS:
                self.usage.private_constant_writes.append(
                    {"at": f"{self.rel}:{node.lineno}", "name": tname, "code": ast.unparse(node)[:200]})

    def visit_Assign(self, node: ast.Assign):
        self._assign_targets(node.targets, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign):
        self._assign_targets([node.target], node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant):
        if isinstance(node.value, str) and "/.well-known/asap/manifest.json" in node.value:
            self.usage.raw_manifest_fetches.append(f"{self.rel}:{node.lineno}")

    def visit_ExceptHandler(self, node: ast.ExceptHandler):
        caught = _exc_names(node.type) & FALLBACK_ERRORS
        only_reraises = all(isinstance(s, ast.Raise) for s in node.body)
        if caught and not only_reraises:
            fn = self.funcs[-1].name if self.funcs else "<module>"
            self.usage.fallbacks.append({"at": f"{self.rel}:{node.lineno}", "function": fn,
                                         "catches": sorted(caught),
                                         "does": ast.unparse(node.body[0])[:160]})
        self.generic_visit(node)


def client_usage(root: Path) -> ClientUsage:
    """Parse (never import) every Python file under `root` and collect how ASAPClients are built and used."""
    usage = ClientUsage(str(root))
    for path in python_files(root):
        try:
            tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
        except SyntaxError:
            usage.unparsed.append(str(path))
            continue
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        _Walker(rel, usage).visit(tree)
    return usage
