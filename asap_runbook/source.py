"""Reading an agent's source and process configuration without importing or running it."""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CREDENTIAL_NAME = re.compile(r"(token|secret|passw(or)?d|api_?key|apikey|credential|auth_?key|private_?key|bearer)", re.I)

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


class Unresolved(ValueError):
    """An expression whose value the file alone does not give (an environment variable, a call)."""


_CPU_CALLS = {"cpu_count", "process_cpu_count"}  # multiprocessing.cpu_count(), os.cpu_count()


def eval_workers(node: ast.AST, cpus: int) -> int:
    """An integer expression such as `multiprocessing.cpu_count() * 2 + 1`, with the CPU count given."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
        a, b = eval_workers(node.left, cpus), eval_workers(node.right, cpus)
        op = node.op
        return a + b if isinstance(op, ast.Add) else a - b if isinstance(op, ast.Sub) else \
            a * b if isinstance(op, ast.Mult) else a // b
    if isinstance(node, ast.Call):
        fn = _name(node.func)
        if fn in _CPU_CALLS and not node.args:
            return cpus
        if fn == "len" and node.args and "sched_getaffinity" in ast.unparse(node.args[0]):
            return cpus
        if fn == "int" and len(node.args) == 1:
            return eval_workers(node.args[0], cpus)
        if fn in ("max", "min") and node.args:
            vals = [eval_workers(a, cpus) for a in node.args]
            return max(vals) if fn == "max" else min(vals)
    raise Unresolved(ast.unparse(node))


@dataclass
class ProcessConfig:
    """What the process configuration says about workers. `workers` is None when the file does not fix
    it: then `workers_expr` is what was written and `per_cpu` says whether it follows the CPU count
    (`workers_at(cpus)` computes it), never a guess."""
    server: str          # "gunicorn" | "uvicorn" | "unknown"
    workers: int | None
    worker_class: str | None
    source: str
    workers_expr: str | None = None
    per_cpu: bool = False
    _node: Any = field(default=None, repr=False, compare=False)

    def workers_at(self, cpus: int) -> int | None:
        if self.workers is not None:
            return self.workers
        if self._node is None:
            return None
        try:
            return eval_workers(self._node, cpus)
        except (Unresolved, ZeroDivisionError):
            return None

    def describe(self) -> str:
        if self.workers is not None:
            return f"{self.workers} {self.server} worker(s)"
        if self.per_cpu:
            return (f"workers = {self.workers_expr}: the host's CPU count (in a container, the node's cores, not "
                    f"the CPU limit), so at least {self.workers_at(1)} {self.server} workers")
        if self.workers_expr:
            return f"workers = {self.workers_expr}: not fixed in the file (unknown)"
        return f"no worker count in the file ({self.server}): unknown"


def _module_values(tree: ast.Module) -> dict[str, ast.AST]:
    return {n.targets[0].id: n.value for n in tree.body
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}


def read_process_config(path: Path) -> ProcessConfig:
    """A gunicorn config file (*.py) or a file holding the server's command line."""
    text = path.read_text()
    if path.suffix == ".py":
        values = _module_values(ast.parse(text))
        node = values.get("workers")
        wc = values.get("worker_class")
        worker_class = _literal(wc) if wc is not None else None
        if node is None:
            return ProcessConfig("gunicorn", None, worker_class, f"{path.name}: no workers = (gunicorn's default is 1, "
                                 "overridable by GUNICORN_CMD_ARGS / WEB_CONCURRENCY)", None)
        expr = ast.unparse(node)
        try:
            workers = eval_workers(node, cpus=-10_000)  # an expression that ignores the CPU count is a fixed number
            eval_workers(node, cpus=1)
        except (Unresolved, ZeroDivisionError):
            workers = None
        if workers is not None and workers != eval_workers(node, 1):
            workers = None
        per_cpu = workers is None and _resolves(node)
        return ProcessConfig("gunicorn", workers, worker_class if isinstance(worker_class, str) else None,
                             f"{path.name}: workers = {expr}", expr, per_cpu, node if per_cpu else None)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    argv = shlex.split(" ".join(ln.rstrip("\\") for ln in lines))
    server = next((s for s in ("gunicorn", "uvicorn") if any(a.endswith(s) for a in argv)), "unknown")
    # uvicorn without --workers runs one process; gunicorn without -w: 1 too, unless WEB_CONCURRENCY is set
    workers, worker_class, expr = (1 if server == "uvicorn" else None), None, None
    for i, a in enumerate(argv):
        for flag in ("--workers", "-w"):
            value = argv[i + 1] if a == flag and i + 1 < len(argv) else a.split("=", 1)[1] if a.startswith(flag + "=") else None
            if value is not None:
                workers, expr = (int(value), None) if value.isdigit() else (None, value)
        if a in ("-k", "--worker-class") and i + 1 < len(argv):
            worker_class = argv[i + 1]
    return ProcessConfig(server, workers, worker_class, " ".join(argv), expr)


def _resolves(node: ast.AST) -> bool:
    try:
        eval_workers(node, 1)
        return True
    except (Unresolved, ZeroDivisionError):
        return False


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


UNKNOWN = "unknown"  # a setting the source passes through something it does not resolve (**kwargs from a call)


@dataclass
class ClientSite:
    """One `ASAPClient(...)` construction and where it lives."""
    file: str
    line: int
    kwargs: dict[str, Any]
    scope: str             # "module", "function <name>" or "lambda"
    long_lived: bool | None  # built once (module level, cached factory, __init__/lifespan); None: not resolved
    why: str               # how long_lived was decided, or what was found when it was not
    in_loop: bool
    unresolved: list[str] = field(default_factory=list)  # `**expr` the settings come through, not resolved

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def setting(self, name: str) -> tuple[Any, bool]:
        """(value, explicit): the effective value of a client setting and whether the code set it.
        UNKNOWN when the code passes settings through `**expr` it cannot resolve and does not name it."""
        rc = self.kwargs.get("retry_config")
        if isinstance(rc, dict) and rc.get("__call__") == "RetryConfig" and name in (
                "max_retries", "base_delay", "max_delay", "jitter", "circuit_breaker_enabled",
                "circuit_breaker_threshold", "circuit_breaker_timeout"):
            if name in rc:
                return rc[name], True
            return (UNKNOWN, False) if rc.get("**") else (CLIENT_DEFAULTS[name], False)
        if name in self.kwargs:
            return self.kwargs[name], True
        if self.unresolved:
            return UNKNOWN, False
        return CLIENT_DEFAULTS.get(name), False

    def summary(self) -> dict[str, Any]:
        """What the checks show: credential-like settings (auth_token=...) say whether they are set, never
        their value (a literal there is SEC-AUTH-3's finding, and stays out of every page)."""
        kwargs = {k: "(set; value not shown)" if CREDENTIAL_NAME.search(k) and v not in (None, "None") else v
                  for k, v in self.kwargs.items()}
        return {"at": self.where(), "scope": self.scope, "long_lived": self.long_lived, "why": self.why,
                "in_loop": self.in_loop, "kwargs": kwargs, "settings not resolved": self.unresolved}


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
    files: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "files": self.files, "clients": [c.summary() for c in self.clients],
                "manifest_caches": [asdict(c) for c in self.manifest_caches],
                "manifest_lookups": [c.where() for c in self.manifest_lookups],
                "raw_manifest_fetches": self.raw_manifest_fetches, "private_constant_writes": self.private_constant_writes,
                "fallbacks": self.fallbacks, "unparsed": self.unparsed}


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


def _call_kwargs(node: ast.Call, consts: dict[str, ast.AST]) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments as values; `**SETTINGS` merged when SETTINGS is a module-level dict literal or
    dict(...) call, `timeout=TIMEOUT` resolved when TIMEOUT is a module-level literal. What does not
    resolve is returned as text (never guessed)."""
    out: dict[str, Any] = {}
    unresolved: list[str] = []
    for k in node.keywords:
        value = k.value
        if isinstance(value, ast.Name) and value.id in consts:
            value = consts[value.id]
        if k.arg is None:
            if isinstance(value, ast.Dict) and all(isinstance(key, ast.Constant) for key in value.keys):
                out.update({key.value: _literal(v) for key, v in zip(value.keys, value.values)})
            elif isinstance(value, ast.Call) and _name(value.func) == "dict" and not value.args:
                sub, more = _call_kwargs(value, consts)
                out.update(sub)
                unresolved += more
            else:
                unresolved.append("**" + ast.unparse(k.value))
        else:
            if isinstance(value, ast.Call):
                sub, more = _call_kwargs(value, consts)
                out[k.arg] = {"__call__": _name(value.func), **sub, **({"**": more} if more else {})}
            else:
                out[k.arg] = _literal(value)
    return out, unresolved


def _constants(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level names bound once to a literal, a dict literal or a dict(...) call."""
    out: dict[str, ast.AST] = {}
    for name, value in _module_values(tree).items():
        if isinstance(value, (ast.Dict, ast.Constant)) or (isinstance(value, ast.Call) and _name(value.func) == "dict"):
            out[name] = value
    return out


class _Walker(ast.NodeVisitor):
    def __init__(self, rel: str, usage: ClientUsage, consts: dict[str, ast.AST]):
        self.rel, self.usage, self.consts = rel, usage, consts
        self.funcs: list[ast.AST] = []
        self.loops = 0
        self.lambdas: list[ast.Lambda] = []
        self.factories: list[tuple[str, ClientSite]] = []  # (function name, site): built and returned to callers
        self.calls: list[tuple[str, str, str]] = []  # (callee name, caller "module"/function name, what happens)

    def _visit_func(self, node):
        self.funcs.append(node)
        saved, self.loops = self.loops, 0
        self.generic_visit(node)
        self.loops = saved
        self.funcs.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_func

    def visit_Lambda(self, node):
        self.lambdas.append(node)
        self.generic_visit(node)
        self.lambdas.pop()

    def _visit_loop(self, node):
        self.loops += 1
        self.generic_visit(node)
        self.loops -= 1

    visit_For = visit_AsyncFor = visit_While = _visit_loop

    def _returned(self, fn: ast.AST, call: ast.Call) -> bool:
        """`return ASAPClient(...)`, or `c = ASAPClient(...)` ... `return c`, in fn."""
        names = set()
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign) and n.value is call:
                names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(fn):
            if isinstance(n, ast.Return) and n.value is not None and (
                    n.value is call or (isinstance(n.value, ast.Name) and n.value.id in names)):
                return True
        return False

    def visit_Call(self, node: ast.Call):
        name = _name(node.func)
        kwargs, unresolved = _call_kwargs(node, self.consts)
        if name == "ASAPClient":
            site = ClientSite(self.rel, node.lineno, kwargs, "module", True, "built at module level",
                              self.loops > 0, unresolved)
            if self.lambdas:
                site.scope, site.long_lived = "lambda", None
                site.why = "built in a lambda: a new client each time it is called"
                self.factories.append((_lambda_key(self.rel, self.lambdas[-1]), site))
            elif self.funcs:
                fn = self.funcs[-1]
                site.scope = f"function {fn.name}"
                cached = _decorator_names(fn) & _CACHING_DECORATORS
                if cached:
                    site.why = f"built in {fn.name}(), which is memoised (@{sorted(cached)[0]})"
                elif any(f.name.startswith(_LONG_LIVED_FUNCS) for f in self.funcs):
                    site.why = f"built in {fn.name}(), run once at start-up"
                elif self._returned(fn, node):
                    site.long_lived, site.why = None, f"built and returned by {fn.name}(): a new client per call of it"
                    self.factories.append((fn.name, site))
                else:
                    site.long_lived = False
                    site.why = f"built inside {fn.name}(): a new client (pool, manifest cache) per call"
            self.usage.clients.append(site)
        elif name == "ManifestCache":
            self.usage.manifest_caches.append(CallSite(self.rel, node.lineno, name, kwargs))
        elif name in ("get_manifest", "discover") and isinstance(node.func, ast.Attribute):
            self.usage.manifest_lookups.append(CallSite(self.rel, node.lineno, name, kwargs))
        elif name == "setattr" and len(node.args) >= 2:
            attr = _literal(node.args[1])
            if attr in PRIVATE_CLIENT_CONSTANTS:
                self.usage.private_constant_writes.append(
                    {"at": f"{self.rel}:{node.lineno}", "name": attr, "code": ast.unparse(node)})
        # who calls what, for factories: at module level or in a start-up/memoised function it runs once
        if self.funcs:
            fn = self.funcs[-1]
            once = bool(_decorator_names(fn) & _CACHING_DECORATORS) or any(
                f.name.startswith(_LONG_LIVED_FUNCS) for f in self.funcs)
            # what the caller does with the result is worked out only for factories' calls (_resolve_factories)
            self.calls.append((name, fn.name, "once" if once else (fn, node)))
        else:
            self.calls.append((name, "<module>", "once"))
        for k in node.keywords:  # a factory handed over by reference: make_client=factory / lambda
            if k.arg and isinstance(k.value, (ast.Name, ast.Lambda)):
                ref = k.value.id if isinstance(k.value, ast.Name) else _lambda_key(self.rel, k.value)
                self.calls.append((ref, f"{name}(...) at {self.rel}:{node.lineno}", f"passed as {k.arg}="))
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


def _lambda_key(rel: str, node: ast.Lambda) -> str:
    return f"<lambda {rel}:{node.lineno}:{node.col_offset}>"


def _caller_keeps(fn: ast.AST, call: ast.Call) -> str:
    """What a function does with a factory's result: 'per call' (uses it and drops it), 'kept' (stores it in a
    global, a module-level dict or an attribute), 'kept if ...' (stores it under a condition)."""
    local = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) and n.value is call
             for t in n.targets if isinstance(t, ast.Name)}
    globals_ = {g for n in ast.walk(fn) if isinstance(n, ast.Global) for g in n.names}

    def stores(n: ast.AST) -> bool:
        if not isinstance(n, ast.Assign):
            return False
        from_call = n.value is call or (isinstance(n.value, ast.Name) and n.value.id in local)
        kept = any(isinstance(t, (ast.Subscript, ast.Attribute)) or (isinstance(t, ast.Name) and t.id in globals_)
                   for t in n.targets)
        return from_call and kept

    if not any(stores(n) for n in ast.walk(fn)):
        return "per call"
    guards = [n for n in ast.walk(fn) if isinstance(n, ast.If) and any(stores(m) for s in n.body for m in ast.walk(s))]
    inner = max(guards, key=lambda n: (n.lineno, n.col_offset), default=None)
    lazy = inner is not None and (  # `if client is None:` / `if not client:` is lazy initialisation: kept
        (isinstance(inner.test, ast.Compare) and isinstance(inner.test.ops[0], ast.Is)
         and isinstance(inner.test.comparators[0], ast.Constant) and inner.test.comparators[0].value is None)
        or (isinstance(inner.test, ast.UnaryOp) and isinstance(inner.test.op, ast.Not)))
    return "kept" if inner is None or lazy else f"kept if {ast.unparse(inner.test)}"


def _resolve_factories(walkers: list[_Walker]) -> None:
    """A client built in a factory is as long-lived as the factory's callers make it; a factory only handed
    over by reference (make_client=f) is followed to calls of that keyword's name (policy.make_client(...))."""
    calls = [c for w in walkers for c in w.calls]
    wanted = {f for w in walkers for f, _ in w.factories}
    wanted |= {how.removeprefix("passed as ").rstrip("=") for callee, _, how in calls
               if isinstance(how, str) and how.startswith("passed as ") and callee in wanted}
    calls = [(callee, caller, _caller_keeps(*how) if isinstance(how, tuple) and callee in wanted else how)
             for callee, caller, how in calls if callee in wanted]
    for w in walkers:
        for fname, site in w.factories:
            names = {fname}
            passed = [(caller, how) for callee, caller, how in calls if how.startswith("passed as ") and callee == fname]
            names |= {how.removeprefix("passed as ").rstrip("=") for _, how in passed}
            uses = [(callee, caller, how) for callee, caller, how in calls if callee in names
                    and not how.startswith("passed as ")]
            found = [f"{how} {caller}" for caller, how in passed] + \
                    [f"{callee}() called in {caller} ({how})" for callee, caller, how in uses]
            kinds = {how if not how.startswith("kept if") else "conditional" for _, _, how in uses}
            if uses and kinds <= {"once", "kept"}:
                site.long_lived = True
                site.why += "; its callers keep the result: " + "; ".join(found)
            elif uses and kinds == {"per call"}:
                site.long_lived = False
                site.why += "; called per request: " + "; ".join(found)
            else:
                site.why += ("; how often it is called is not resolved from the source: "
                             + ("; ".join(found) if found else "no call found"))


def client_usage(root: Path) -> ClientUsage:
    """Parse (never import) every Python file under `root` and collect how ASAPClients are built and used."""
    usage = ClientUsage(str(root))
    walkers = []
    for path in python_files(root):
        try:
            tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
        except SyntaxError:
            usage.unparsed.append(str(path))
            continue
        usage.files += 1
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        w = _Walker(rel, usage, _constants(tree))
        w.visit(tree)
        walkers.append(w)
    _resolve_factories(walkers)
    return usage
