"""Reading an agent's source and process configuration without importing or running it."""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "site-packages", ".tox"}


def python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.parts))


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
