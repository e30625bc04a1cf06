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
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .source import python_files, skipped_dir

_CRED_NAME = re.compile(r"(token|secret|passw(or)?d|api_?key|apikey|credential|auth_?key|private_?key|bearer)", re.I)
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
            if value and any(_CRED_NAME.search(n) for n in names):
                flag(node, value, f"{'/'.join(names)} = '...'")
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                value = _str(kw.value)
                if kw.arg and value and _CRED_NAME.search(kw.arg):
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
                    if value and any(_CRED_NAME.search(n) for n in _target_names(a)):
                        flag(node, value, f"{'/'.join(_target_names(a))} compared with a literal")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                key, value = _str(k), _str(v)
                if key and value and _CRED_NAME.search(key):
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


def hardcoded_credentials(roots: list[Path]) -> ScanResult:
    files, hits, broken = 0, [], []
    for root in roots:
        for rel, tree in parsed_python_files(root, broken):
            files += 1
            hits += _py_credentials(tree, rel)
        for path in _config_files(root):
            files += 1
            hits += _config_credentials(path, _rel(path, root))
    return ScanResult(files, hits, broken)


# ---------------------------------------------------------------- handler code

# names that carry request data into a handler
_TAINT = re.compile(r"\b(payload|payload_dict|input|envelope|params|request|req|body|uri)\b")
_FILE_SINKS = {"open", "Path", "PurePath", "path.join", "FileResponse", "send_file", "urlopen", "copyfile",
               "remove", "unlink", "rmtree"}
_GUARDS = ("FilePart", "is_relative_to", "commonpath", "safe_join", "secure_filename")


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _tainted(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return False
    text = ast.unparse(node)
    return "__file__" not in text and bool(_TAINT.search(text))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@dataclass
class SinkReport:
    files: int
    unguarded: list[Hit]
    guarded: list[Hit]
    broken: list[str]
    guards: list[Hit]  # functions that validate paths/URIs (FilePart, is_relative_to, ...)


def parsed_python_files(root: Path, broken: list[str]):
    """(relative path, AST) of each Python file under root; files that do not parse go to `broken`."""
    for path in python_files(root):
        try:
            yield _rel(path, root), ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            broken.append(_rel(path, root))


def file_sinks(root: Path) -> SinkReport:
    """Calls that open or resolve a path/URI built from request data, and whether a guard is near."""
    files, unguarded, guarded, broken, guards = 0, [], [], [], []
    seen: set[tuple[str, int]] = set()
    for rel, tree in parsed_python_files(root, broken):
        files += 1
        for fn in _functions(tree):
            body = ast.unparse(fn)
            guard = next((g for g in _GUARDS if g in body), None)
            if guard:
                guards.append(Hit(rel, fn.lineno, f"{fn.name}() uses {guard}"))
            for node in ast.walk(fn):
                name = _call_name(node.func) if isinstance(node, ast.Call) else ""
                if name == "join" and ast.unparse(node.func).endswith("path.join"):
                    name = "path.join"
                if name in _FILE_SINKS:
                    args = list(node.args) + [k.value for k in node.keywords]
                    if any(_tainted(a) for a in args) and (rel, node.lineno) not in seen:
                        seen.add((rel, node.lineno))
                        call = ast.unparse(node)[:120]
                        if guard:
                            guarded.append(Hit(rel, node.lineno, f"{call} in {fn.name}() (guard: {guard})"))
                        else:
                            unguarded.append(Hit(rel, node.lineno, f"{call} in {fn.name}() with no traversal guard"))
    return SinkReport(files, unguarded, guarded, broken, guards)


_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg", "log"}
_LOGGER_NAMES = re.compile(r"^(logger|log|logging|_log|_logger|structlog|LOG|LOGGER)$|logger$")
# a whole request object, or its payload/input, passed as a log argument
_DATA = re.compile(r"^(\w+\.)*(payload|payload_dict|envelope|input|params|body|request_json|req)(\(\))?$"
                   r"|^(\w+\.)*(payload|payload_dict|input|params)\.model_dump\(\)$")


@dataclass
class LogReport:
    files: int
    log_calls: int
    unsanitized: list[Hit]
    sanitized: list[Hit]
    broken: list[str]


def unsanitized_logging(root: Path) -> LogReport:
    files, calls, bad, good, broken = 0, 0, [], [], []
    for rel, tree in parsed_python_files(root, broken):
        files += 1
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LOG_METHODS and _LOGGER_NAMES.search(ast.unparse(node.func.value))):
                continue
            calls += 1
            texts = [ast.unparse(a) for a in list(node.args[1:]) + [k.value for k in node.keywords]]
            where = Hit(rel, node.lineno, ast.unparse(node)[:140])
            if any(_DATA.search(t) for t in texts):
                bad.append(where)
            elif any("sanitize_for_logging(" in t for t in texts):
                good.append(where)
    return LogReport(files, calls, bad, good, broken)
