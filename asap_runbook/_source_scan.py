"""Static scans of an agent's source and config tree for the Security checks (read, never import).

* hard-coded credentials (SEC-AUTH-3): Python string literals bound to credential-like names or
  passed as `auth_token=` / compared in a validator, `Bearer <literal>`, and `key: value`
  credential lines in YAML / .env / JSON / INI files. Values are never reported, only their
  place and length.
* file/URI sinks fed from request input without a traversal guard (SEC-HANDLER-2).
* logging calls that pass envelope/payload data without `sanitize_for_logging` (SEC-HANDLER-3).

Heuristics, stated as such in every finding: they find the usual shapes, not every shape.
"""

from __future__ import annotations

import ast
import copy
import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .source import CREDENTIAL_NAME, python_files, skipped_dir

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # "ASAP_TOKEN": the name of a variable, not a value
_PLACEHOLDER = re.compile(r"^(\*+|x+|changeme|change-me|redacted|<.*>|\$\{.*\}|\$\w+|\{\{.*\}\}|none|null|true|false)$", re.I)
_CONFIG_SUFFIXES = {".yaml", ".yml", ".env", ".json", ".ini", ".cfg", ".toml", ".conf", ".properties"}
_CONFIG_LINE = re.compile(
    r"""^\s*["']?(?P<key>[\w.\-]*?(token|secret|passw(?:or)?d|api_?key|apikey|credential)[\w.\-]*)["']?\s*[:=]\s*["']?(?P<val>[^"'\s#,]+)""",
    re.I)
_BEARER_LITERAL = re.compile(r"Bearer\s+([A-Za-z0-9._~+/=\-]{12,})")
MIN_SECRET_LEN = 8


@dataclass
class Hit:
    file: str
    line: int
    what: str

    def as_dict(self) -> dict:
        return {"at": f"{self.file}:{self.line}", "what": self.what}


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _looks_secret(value: str) -> bool:
    v = value.strip()
    if len(v) < MIN_SECRET_LEN or _ENV_NAME.match(v) or _PLACEHOLDER.match(v) or " " in v:
        return False
    if v.startswith(("http://", "https://", "/", "./", "urn:")):
        return False
    return _entropy(v) >= 3.0


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if root.is_dir() else path.name


def _target_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return [node.slice.value]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [n for e in node.elts for n in _target_names(e)]
    return []


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


_ENV_GETTERS = {"os.environ.get", "environ.get", "os.getenv", "getenv", "os.environ.setdefault"}


def _env_fallback(node: ast.Call) -> tuple[str, str] | None:
    """`os.environ.get("API_TOKEN", "literal")` / `os.getenv(...)`: (variable name, fallback literal)."""
    if ast.unparse(node.func) not in _ENV_GETTERS or len(node.args) < 2:
        return None
    name, value = _str(node.args[0]), _str(node.args[1])
    return (name, value) if name and value else None


def _py_credentials(tree: ast.AST, rel: str) -> list[Hit]:
    hits: list[Hit] = []

    def flag(node: ast.AST, value: str, why: str) -> None:
        if _looks_secret(value):
            hits.append(Hit(rel, node.lineno, f"{why} (literal of {len(value)} chars, value not shown)"))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = _str(node.value)
            names = [n for t in targets for n in _target_names(t)]
            if value and any(CREDENTIAL_NAME.search(n) for n in names):
                flag(node, value, f"{'/'.join(names)} = '...'")
        elif isinstance(node, ast.Call) and _env_fallback(node):
            name, value = _env_fallback(node)
            # any real-looking literal behind a credential variable: "dev-token" is short and low-entropy, yet it
            # is what the agent accepts the day the variable is missing
            if CREDENTIAL_NAME.search(name) and len(value.strip()) >= 4 and not _PLACEHOLDER.match(value.strip()):
                hits.append(Hit(rel, node.lineno, f"{ast.unparse(node.func)}({name!r}, '...'): a hard-coded fallback "
                                                  f"used whenever {name} is unset (literal of {len(value)} chars, "
                                                  "value not shown)"))
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                value = _str(kw.value)
                if kw.arg and value and CREDENTIAL_NAME.search(kw.arg):
                    flag(node, value, f"{kw.arg}='...' in a call")
            for arg in node.args:  # hmac.compare_digest(token, "literal")
                value = _str(arg)
                if value and isinstance(node.func, ast.Attribute) and node.func.attr == "compare_digest":
                    flag(node, value, "compare_digest against a literal")
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if not isinstance(op, (ast.Eq, ast.NotEq)):
                    continue
                for a, b in ((left, right), (right, left)):
                    value = _str(b)
                    if value and any(CREDENTIAL_NAME.search(n) for n in _target_names(a)):
                        flag(node, value, f"{'/'.join(_target_names(a))} compared with a literal")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                key, value = _str(k), _str(v)
                if key and value and CREDENTIAL_NAME.search(key):
                    flag(node, value, f"'{key}': '...' in a dict")
                if key and key.lower() == "authorization" and value:
                    m = _BEARER_LITERAL.search(value)
                    if m:
                        flag(node, m.group(1), "Authorization: Bearer <literal>")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _BEARER_LITERAL.search(node.value)
            if m and not node.value.strip().startswith(("Bearer {", "Bearer %")):
                flag(node, m.group(1), "'Bearer <literal>' string")
    # one hit per line is enough
    seen, out = set(), []
    for h in hits:
        if (h.file, h.line) not in seen:
            seen.add((h.file, h.line))
            out.append(h)
    return out


def _config_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix in _CONFIG_SUFFIXES or root.name.startswith(".env") else []
    return sorted(p for p in root.rglob("*") if p.is_file() and not skipped_dir(p, root)
                  and (p.suffix in _CONFIG_SUFFIXES or p.name.startswith(".env")))


def _config_credentials(path: Path, rel: str) -> list[Hit]:
    hits = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return hits
    for n, line in enumerate(text.splitlines()[:20000], 1):
        m = _CONFIG_LINE.match(line)
        if m and _looks_secret(m.group("val")) and "secretKeyRef" not in line:
            hits.append(Hit(rel, n, f"{m.group('key')}: <literal of {len(m.group('val'))} chars, value not shown>"))
        else:
            b = _BEARER_LITERAL.search(line)
            if b and _looks_secret(b.group(1)):
                hits.append(Hit(rel, n, "Bearer <literal>"))
    return hits


@dataclass
class ScanResult:
    files: int
    hits: list[Hit]
    broken: list[str]
    python_files: int = 0
    env_reads: list[str] = field(default_factory=list)  # credential variables read from the environment

    def as_dict(self) -> dict:
        return {"files": self.files, "python files": self.python_files, "config files": self.files - self.python_files,
                "credential variables read from the environment": self.env_reads[:50],
                "hard-coded credential candidates (values not shown)": [h.as_dict() for h in self.hits],
                "files that did not parse": self.broken}


# A fleet's targets name one source tree per app: each scan is made once per process for a version of
# the tree (every file it reads, by mtime and size), and its report copied to each caller.
_scans: dict[tuple, object] = {}


def _tree_version(root: Path) -> tuple:
    out = []
    for path in [*python_files(Path(root)), *_config_files(Path(root))]:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def _once_per_tree_version(scan):
    @functools.wraps(scan)
    def cached(roots):
        key = (scan.__name__, tuple(_tree_version(r) for r in (roots if isinstance(roots, list) else [roots])),
               repr(roots))
        if key not in _scans:
            _scans[key] = scan(roots)
        return copy.deepcopy(_scans[key])
    return cached


@_once_per_tree_version
def hardcoded_credentials(roots: list[Path]) -> ScanResult:
    rep = ScanResult(0, [], [])
    for root in roots:
        for rel, tree in parsed_python_files(root, rep.broken):
            rep.files += 1
            rep.python_files += 1
            rep.hits += _py_credentials(tree, rel)
            rep.env_reads += [f"{rel}:{n.lineno} {_str(n.args[0])}" for n in ast.walk(tree)
                              if isinstance(n, ast.Call) and ast.unparse(n.func) in _ENV_GETTERS | {"os.environ.__getitem__"}
                              and n.args and _str(n.args[0]) and CREDENTIAL_NAME.search(_str(n.args[0]))]
            rep.env_reads += [f"{rel}:{n.lineno} {_str(n.slice)}" for n in ast.walk(tree)
                              if isinstance(n, ast.Subscript) and ast.unparse(n.value) in ("os.environ", "environ")
                              and _str(n.slice) and CREDENTIAL_NAME.search(_str(n.slice))]
        for path in _config_files(root):
            rep.files += 1
            rep.hits += _config_credentials(path, _rel(path, root))
    return rep


# ---------------------------------------------------------------- handler code

# names that carry request data into a handler (parameters of a handler, and what is derived from them)
_TAINT_NAMES = {"payload", "payload_dict", "input", "inputs", "envelope", "params", "request", "req", "body", "uri",
                "data", "message", "msg", "task", "task_request", "args", "kwargs", "arguments"}
_FILE_SINKS = {"open", "Path", "PurePath", "path.join", "FileResponse", "send_file", "urlopen", "copyfile",
               "remove", "unlink", "rmtree", "read_text", "read_bytes", "write_text", "write_bytes"}
_GUARDS = ("FilePart", "is_relative_to", "commonpath", "safe_join", "secure_filename")


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def tainted_names(fn: ast.AST) -> set[str]:
    """Names in `fn` holding request data: request-like parameters, then locals assigned from them (to a fixpoint)."""
    args = fn.args
    params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    taint = params & _TAINT_NAMES
    assigns = [n for n in ast.walk(fn) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.For, ast.With))]
    changed = True
    while changed:
        changed = False
        for n in assigns:
            if isinstance(n, ast.For):
                pairs = [(n.target, n.iter)]
            elif isinstance(n, ast.With):
                pairs = [(i.optional_vars, i.context_expr) for i in n.items if i.optional_vars is not None]
            else:
                pairs = [(t, n.value) for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                         if n.value is not None]
            pairs = [(t, v) for target, value in pairs for t, v in (
                zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                and len(target.elts) == len(value.elts) else [(target, value)])]
            for target, value in pairs:
                if _carries(value, taint):
                    new = _names(target) - taint
                    if new:
                        taint |= new
                        changed = True
    return taint


_PASSTHROUGH = {"model_validate", "parse_obj", "loads", "dict", "list", "str", "copy", "deepcopy", "model_dump",
                "get", "pop", "items", "values"}
_SCALAR_CALLS = {"len", "int", "float", "bool", "type", "isinstance", "hash", "sanitize_for_logging"}


def _carries(node: ast.AST, taint: set[str]) -> bool:
    """Does this expression carry request content (not just an identifier field, a length, a test)?"""
    if not (_names(node) & taint) or _sanitized(node):
        return False
    if isinstance(node, ast.Attribute) and node.attr in _SAFE_FIELDS:
        return False
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in _SAFE_FIELDS:
        return False
    if isinstance(node, ast.Await):
        return _carries(node.value, taint)
    if isinstance(node, ast.Call):
        fn = _call_name(node.func)
        if fn in _SCALAR_CALLS:
            return False
        # request data flows through its own methods (data.get), parsing and model classes, not through
        # arbitrary functions it is handed to (lookup(data) returns the lookup's result)
        own_method = isinstance(node.func, ast.Attribute) and bool(_names(node.func.value) & taint)
        if not (own_method or fn in _PASSTHROUGH or fn[:1].isupper()):
            return False
    if isinstance(node, (ast.Compare, ast.BoolOp)) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)):
        return False
    return True


def _sanitized(node: ast.AST) -> bool:
    return "sanitize_for_logging(" in ast.unparse(node)


def _tainted(node: ast.AST, taint: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return False
    return "__file__" not in ast.unparse(node) and bool(_names(node) & taint)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parsed_python_files(root: Path, broken: list[str]):
    """(relative path, AST) of each Python file under root; files that do not parse go to `broken`."""
    for path in python_files(root):
        try:
            yield _rel(path, root), ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            broken.append(_rel(path, root))


@dataclass
class SinkReport:
    files: int
    unguarded: list[Hit]
    guarded: list[Hit]
    broken: list[str]
    guards: list[Hit]  # functions that validate paths/URIs (FilePart, is_relative_to, ...)
    functions: int = 0                                    # functions scanned
    request_functions: list[str] = field(default_factory=list)  # functions that take request data

    def as_dict(self) -> dict:
        return {"files": self.files, "functions": self.functions, "functions taking request data":
                self.request_functions[:50], "unguarded sinks": [h.as_dict() for h in self.unguarded],
                "guarded sinks": [h.as_dict() for h in self.guarded], "guards": [h.as_dict() for h in self.guards],
                "files that did not parse": self.broken}


@_once_per_tree_version
def file_sinks(root: Path) -> SinkReport:
    """Calls that open or resolve a path/URI built from request data, and whether a guard is near."""
    rep = SinkReport(0, [], [], [], [])
    seen: set[tuple[str, int]] = set()
    for rel, tree in parsed_python_files(root, rep.broken):
        rep.files += 1
        for fn in _functions(tree):
            rep.functions += 1
            taint = tainted_names(fn)
            if taint:
                rep.request_functions.append(f"{rel}:{fn.lineno} {fn.name}()")
            body = ast.unparse(fn)
            guard = next((g for g in _GUARDS if g in body), None)
            if guard:
                rep.guards.append(Hit(rel, fn.lineno, f"{fn.name}() uses {guard}"))
            for node in ast.walk(fn):
                name = _call_name(node.func) if isinstance(node, ast.Call) else ""
                if name == "join" and ast.unparse(node.func).endswith("path.join"):
                    name = "path.join"
                if name not in _FILE_SINKS:
                    continue
                args = list(node.args) + [k.value for k in node.keywords]
                if isinstance(node.func, ast.Attribute) and name in ("read_text", "read_bytes", "write_text",
                                                                    "write_bytes", "unlink", "open"):
                    args.append(node.func.value)  # (BASE / data["file"]).read_text()
                if any(_tainted(a, taint) for a in args) and (rel, node.lineno) not in seen:
                    seen.add((rel, node.lineno))
                    call = ast.unparse(node)[:120]
                    if guard:
                        rep.guarded.append(Hit(rel, node.lineno, f"{call} in {fn.name}() (guard: {guard})"))
                    else:
                        rep.unguarded.append(Hit(rel, node.lineno, f"{call} in {fn.name}() with no traversal guard"))
    return rep


_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg", "log"}
_LOGGER_NAMES = re.compile(r"^(logger|log|logging|_log|_logger|structlog|LOG|LOGGER)$|logger$")
# fields of request data that identify a request rather than carry its content
_SAFE_FIELDS = {"id", "sender", "recipient", "payload_type", "skill_id", "conversation_id", "trace_id",
                "correlation_id", "type", "status", "asap_version", "timestamp", "method"}


def _logs_data(node: ast.AST, taint: set[str]) -> bool:
    """Request content in a log argument: a tainted name or a field of it, not an identifier field, not
    wrapped in sanitize_for_logging, not just its len()."""
    return "__file__" not in ast.unparse(node) and _carries(node, taint)


def _log_pieces(call: ast.Call) -> list[ast.AST]:
    """What a log call interpolates: later positional args, keywords, f-string fields, `%` and .format() args."""
    pieces = list(call.args[1:]) + [k.value for k in call.keywords if k.arg not in ("exc_info", "stack_info", "extra")]
    extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
    if isinstance(extra, ast.Dict):
        pieces += extra.values
    first = call.args[0] if call.args else None
    if isinstance(first, ast.JoinedStr):
        pieces += [v.value for v in first.values if isinstance(v, ast.FormattedValue)]
    elif isinstance(first, ast.BinOp) and isinstance(first.op, ast.Mod):
        right = first.right
        pieces += list(right.elts) if isinstance(right, ast.Tuple) else [right]
    elif isinstance(first, ast.Call) and _call_name(first.func) == "format":
        pieces += list(first.args) + [k.value for k in first.keywords]
    elif first is not None and not isinstance(first, ast.Constant):
        pieces.append(first)  # logger.info(payload)
    return pieces


@dataclass
class LogReport:
    files: int
    log_calls: int
    unsanitized: list[Hit]
    sanitized: list[Hit]
    broken: list[str]
    functions: int = 0
    request_functions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": self.files, "log calls": self.log_calls, "functions": self.functions,
                "functions taking request data": self.request_functions[:50],
                "log calls passing request data unsanitized": [h.as_dict() for h in self.unsanitized],
                "log calls through sanitize_for_logging": [h.as_dict() for h in self.sanitized],
                "files that did not parse": self.broken}


@_once_per_tree_version
def unsanitized_logging(root: Path) -> LogReport:
    rep = LogReport(0, 0, [], [], [])
    for rel, tree in parsed_python_files(root, rep.broken):
        rep.files += 1
        scopes = [(fn, tainted_names(fn)) for fn in _functions(tree)]
        rep.functions += len(scopes)
        rep.request_functions += [f"{rel}:{fn.lineno} {fn.name}()" for fn, t in scopes if t]
        seen: set[int] = set()
        for fn, taint in sorted(scopes, key=lambda ft: -ft[0].lineno):  # innermost function first
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _LOG_METHODS and _LOGGER_NAMES.search(ast.unparse(node.func.value))):
                    continue
                if node.lineno in seen:
                    continue
                seen.add(node.lineno)
                pieces = _log_pieces(node)
                where = Hit(rel, node.lineno, ast.unparse(node)[:140])
                if any(_logs_data(p, taint) for p in pieces):
                    rep.unsanitized.append(where)
                elif any(_sanitized(p) for p in pieces):
                    rep.sanitized.append(where)
        # module-level log calls (outside any function) count as calls, with no request data in scope
        rep.log_calls += sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                             and n.func.attr in _LOG_METHODS and _LOGGER_NAMES.search(ast.unparse(n.func.value)))
    return rep
