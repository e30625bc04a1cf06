"""Introspecting an agent's app object, in a separate process (reference §3.5, §7).

Importing an ASAP app imports ``asap.transport``, which builds a default app, takes over root
logging and instruments every httpx client of the process. So the runbook never imports the
agent itself: ``introspect_app()`` runs ``python -m asap_runbook.introspect module:attr`` with the
target's ``app_path`` on ``sys.path`` and its non-secret ``app_env``, with a timeout, and reads
one JSON document from the child's stdout (the app's own logs go to stderr).

Nothing here opens a network connection on purpose: building the app creates clients (Redis
for rate limits, nonces) but they connect lazily.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import RunbookError

DEFAULT_TIMEOUT_SECONDS = 30.0
# Stores whose state lives in the process: lost on restart, split across workers/replicas.
PER_PROCESS_HINTS = ("InMemory", "Memory")
EXTERNAL_CLIENT_MODULES = ("redis", "psycopg", "asyncpg", "sqlalchemy", "pymongo", "motor", "aiosqlite", "sqlite3")


class IntrospectionError(RunbookError):
    """The app could not be imported or inspected."""


def _cls(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    t = type(obj)
    backing = sorted({type(v).__module__.split(".")[0] for v in getattr(obj, "__dict__", {}).values()
                      if type(v).__module__.split(".")[0] in EXTERNAL_CLIENT_MODULES})
    return {"class": t.__name__, "module": t.__module__, "backed_by": backing}


def _kind(info: dict | None) -> str:
    """'none' | 'memory' (per process) | 'sqlite' (a local file) | 'external' (a shared service) | 'unknown'."""
    if info is None:
        return "none"
    name = info["class"]
    if any(h in name for h in PER_PROCESS_HINTS):
        return "memory"
    if "SQLite" in name or "Sqlite" in name:
        return "sqlite"
    if set(info["backed_by"]) - {"sqlite3", "aiosqlite"}:
        return "external"
    return "unknown"


def describe(app: Any) -> dict[str, Any]:
    """What an ASAP app is configured with. Runs inside the child process."""
    state = app.state
    manifest = getattr(state, "manifest", None)
    handler = getattr(state, "request_handler", None)
    limiter = getattr(state, "limiter", None)
    storage = getattr(limiter, "_storage", None)
    storage_name = type(storage).__name__ if storage is not None else None
    nonce = _cls(getattr(handler, "nonce_store", None))
    snap = _cls(getattr(state, "snapshot_store", None))
    auth = getattr(manifest, "auth", None)
    out = {
        "app_class": type(app).__name__,
        "manifest_id": getattr(manifest, "id", None),
        "manifest_auth": auth.model_dump() if auth is not None else None,
        "auth_enabled": getattr(handler, "auth_middleware", None) is not None,
        "oauth2": hasattr(state, "oauth2_middleware"),
        "nonce_store": nonce,
        "nonce_store_kind": _kind(nonce) if nonce else "none",
        "max_request_size": getattr(state, "max_request_size", None),
        "max_batch_size": getattr(state, "max_batch_size", None),
        "rate_limits": [str(limit) for limit in getattr(limiter, "_rate_limits", None) or getattr(limiter, "limits", [])],
        "rate_limit_storage": storage_name,
        "rate_limit_storage_kind": ("memory" if storage_name and "Memory" in storage_name
                                    else "external" if storage_name else "none"),
        "snapshot_store": snap,
        "snapshot_store_kind": _kind(snap),
        "websocket_message_rate_limit": getattr(state, "websocket_message_rate_limit", None),
        "mtls": getattr(state, "mtls_config", None) is not None,
        "user_middleware": [m.cls.__name__ for m in getattr(app, "user_middleware", [])],
        "docs_url": getattr(app, "docs_url", None),
        "debug_env": os.environ.get("ASAP_DEBUG"),
    }
    return out


def load_app(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    factory = attr.endswith("()")
    obj = getattr(importlib.import_module(module_name), attr.removesuffix("()"))
    return obj() if factory else obj


def _child(ref: str) -> int:
    # keep stdout for our one JSON document: the app logs to stdout at import (reference §2.2)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    def sentence(e: Exception) -> str:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]

    try:
        app = load_app(ref)
    except BaseException as e:  # noqa: BLE001 - SystemExit at import too: one sentence
        doc = {"ok": False, "app": ref, "error": f"cannot import {ref}: {sentence(e)}"}
    else:
        if not hasattr(app, "state"):
            doc = {"ok": False, "app": ref, "error": f"{ref} is a {type(app).__name__}, not an ASAP app (no app.state)"}
        else:
            try:
                doc = {"ok": True, "app": ref, "config": describe(app)}
            except Exception as e:  # noqa: BLE001
                doc = {"ok": False, "app": ref, "error": f"cannot read the configuration of {ref}: {sentence(e)}"}
    out.write(json.dumps(doc, default=str))
    out.flush()
    return 0


def child_env(app_path: Path | None, app_env: dict[str, str] | None, drop_env: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment a child that imports the app gets: the runbook's without ASAP_*/OTEL_* and
    `drop_env`, plus the operator's `app_env`; PYTHONPATH finds the app and this package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAP_", "OTEL_")) and k not in drop_env}
    env.update(app_env or {})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in (app_path, Path(__file__).resolve().parents[1]) if p] +
        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return env


def _snapshot_child(ref: str) -> int:
    """Read the app's configured snapshot store (RES-4): one task id per stdin line, one JSON line back
    with the store's kind and the task's versions (id, created_at, data of each). Nothing is written."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        store = getattr(load_app(ref).state, "snapshot_store", None)
        info = _cls(store)
        out.write(json.dumps({"ok": store is not None, "store": info, "kind": _kind(info),
                              "error": None if store is not None else f"{ref} has no app.state.snapshot_store"}) + "\n")
    except BaseException as e:  # noqa: BLE001 - SystemExit at import too: one sentence
        out.write(json.dumps({"ok": False, "error": f"cannot import {ref}: {type(e).__name__}: {e}"[:400]}) + "\n")
        out.flush()
        return 0
    out.flush()
    for line in sys.stdin:
        task_id = line.strip()
        try:
            snaps = [store.get(task_id, v) for v in store.list_versions(task_id)]
            doc = {"ok": True, "task_id": task_id, "versions": [
                {"version": s.version, "id": s.id, "created_at": str(s.created_at), "data": s.data} for s in snaps if s]}
        except Exception as e:  # noqa: BLE001 - the store failing is an observation, not a crash
            doc = {"ok": False, "task_id": task_id, "error": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(doc, default=str) + "\n")
        out.flush()
    return 0


# One child per distinct app, not per target: a fleet names the same app (same module, path and
# environment) for many targets, and each child imports asap-protocol (~1.5 s of CPU). Answers are
# kept for CACHE_SECONDS, long enough for one section run, short enough that a notebook re-run in
# JupyterLab after the app's code changed looks again.
CACHE_SECONDS = 300.0
# The kernels of one `asap-runbook run` share answers through this folder (a private temp folder the
# runner makes per run): security and scaling both read the same apps, and a second child per app
# would import asap-protocol again. Not set in JupyterLab: there each kernel asks for itself.
SHARED_DIR_ENV = "ASAP_RUNBOOK_SHARED_DIR"
_cache: dict[tuple, tuple[float, dict[str, Any] | IntrospectionError]] = {}
_locks: dict[tuple, threading.Lock] = {}
_locks_guard = threading.Lock()


def introspection_timeout(params) -> float:
    """How long importing the agent's app in a child may take: the import pulls in asap-protocol and
    the app's own dependencies, and during a run it competes with the section kernels and the
    drills' agents for the CPU; a slow import is no finding about the agent."""
    return max(45.0, params.probe.timeout_seconds * 10)


def introspect_app(ref: str, app_path: Path | None = None, app_env: dict[str, str] | None = None,
                   timeout: float = DEFAULT_TIMEOUT_SECONDS, drop_env: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load `module:attr` in a child process and return its configuration; raise IntrospectionError.

    The child gets the runbook's environment without ASAP_*/OTEL_* (the operator's `app_env` says
    what the app should see) and without `drop_env` (the target's token variable). Concurrent
    calls for the same app wait for one child (threads: the checks call this through to_thread)."""
    key = _key(ref, app_path, app_env, timeout, drop_env)
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _cache.get(key)
        if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
            try:
                hit = (time.monotonic(), _shared_across_kernels(
                    key, lambda: _introspect_child(ref, app_path, app_env, timeout, drop_env)))
            except IntrospectionError as e:
                hit = (time.monotonic(), e)
            _cache[key] = hit
    if isinstance(hit[1], IntrospectionError):
        raise IntrospectionError(hit[1].message)
    return copy.deepcopy(hit[1])


def introspect_target(target, params) -> dict[str, Any]:
    """The target's app (`targets[].app`, which must be set) as the checks read it: the operator's
    path and environment, without the target's token variable; raise IntrospectionError."""
    return introspect_app(*_target_question(target, params))


def _target_question(target, params) -> tuple:
    """introspect_app's arguments for a target: its app, path, environment, the run's timeout, and its
    token variable to leave out."""
    return (target.app, target.app_path, target.app_env, introspection_timeout(params),
            (target.token_env,) if target.token_env else ())


def _key(ref: str, app_path, app_env, timeout: float, drop_env: tuple[str, ...]) -> tuple:
    """What makes two introspections the same question (the cache's and the shared folder's key)."""
    return ref, str(app_path or ""), tuple(sorted((app_env or {}).items())), timeout, tuple(sorted(drop_env))


def _answer_path(where: str | Path, key: tuple) -> Path:
    return Path(where) / f"introspect-{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.json"


def answer_ahead(params, shared_dir: Path, cwd: Path | None = None) -> Callable[[], None]:
    """The runner's side of the shared folder: every distinct app of the run introspected at once, as the
    kernels start, in one process that imports asap-protocol's dependencies once and forks a child per
    app (`_many`). The answers' locks are taken before this returns, so a kernel that asks early waits
    for the answer rather than importing the app itself. Returns a function that waits for the answers.
    If the forking process fails, no answer is written and each kernel looks for itself, as without a
    shared folder. `cwd`: where the kernels run (an app found from the working folder is found here too)."""
    keys = list(dict.fromkeys(_key(*_target_question(t, params)) for t in params.targets if t.app))
    if not keys:
        return lambda: None
    held = []
    for key in keys:
        lock = open(_answer_path(shared_dir, key).with_suffix(".lock"), "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        held.append(lock)

    def answer() -> None:
        try:
            for i, doc in _introspect_many(keys, cwd):
                try:
                    _answer_path(shared_dir, keys[i]).write_text(json.dumps(doc, default=str))
                except OSError:  # the run ended early and its shared folder is gone: nobody asks any more
                    return
                held[i].close()  # closing the file releases its lock: the kernels waiting for this app go on
        finally:
            for lock in held:  # and those the forking process did not answer look for themselves
                lock.close()

    thread = threading.Thread(target=answer, name="introspect-ahead", daemon=True)
    thread.start()
    return thread.join


def _introspect_many(keys: list[tuple], cwd: Path | None) -> Iterator[tuple[int, dict]]:
    """One `_many` process for the apps of `keys`: (index of the key, its shared-folder document:
    {"config": ...} or {"error": sentence}) as each app's answer comes. Stops early, without a word,
    when that process itself fails; the keys it did not answer are the kernels' to look at."""
    requests = [{"ref": ref, "app_path": app_path or None, "app_env": dict(env), "timeout": timeout,
                 "drop_env": list(drop)} for ref, app_path, env, timeout, drop in keys]
    tokens = tuple(sorted({name for key in keys for name in key[4]}))  # no child needs another target's token
    try:
        proc = subprocess.Popen([sys.executable, "-m", "asap_runbook.introspect", "--many"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=child_env(None, None, tokens), cwd=str(cwd) if cwd else None)
    except OSError:
        return
    # each child has its own deadline in the forking process; this one is for that process itself
    watchdog = threading.Timer(30 + sum(r["timeout"] for r in requests), proc.kill)
    watchdog.start()
    try:
        proc.stdin.write(json.dumps(requests))
        proc.stdin.close()
        for line in proc.stdout:
            try:
                answer = json.loads(line)
                i, doc = int(answer["i"]), answer["doc"]
            except (ValueError, KeyError, TypeError):
                continue
            yield i, {"config": doc["config"]} if doc.get("ok") else {"error": str(doc.get("error"))}
    except OSError:
        return
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def _shared_across_kernels(key: tuple, introspect) -> dict[str, Any]:
    """`introspect()` once per run for all its kernels when the runner names a shared folder: the first
    kernel to ask runs the child under an exclusive lock, the others wait and read its answer (or
    its error sentence)."""
    where = os.environ.get(SHARED_DIR_ENV)
    if not where or not Path(where).is_dir():
        return introspect()
    path = _answer_path(where, key)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            try:
                doc = {"config": introspect()}
            except IntrospectionError as e:
                doc = {"error": e.message}
            path.write_text(json.dumps(doc, default=str))
    if "error" in doc:
        raise IntrospectionError(doc["error"])
    return doc["config"]


def _introspect_child(ref: str, app_path: Path | None, app_env: dict[str, str] | None, timeout: float,
                      drop_env: tuple[str, ...]) -> dict[str, Any]:
    env = child_env(app_path, app_env, drop_env)
    try:
        proc = subprocess.run([sys.executable, "-m", "asap_runbook.introspect", ref], env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=str(app_path) if app_path else None)
    except subprocess.TimeoutExpired:
        raise IntrospectionError(_too_slow(ref, timeout)) from None
    doc = _child_doc(ref, proc.stdout, proc.stderr, proc.returncode)
    if not doc.get("ok"):
        raise IntrospectionError(str(doc.get("error")))
    return doc["config"]


def _too_slow(ref: str, timeout: float) -> str:
    return f"importing {ref} did not finish within {timeout:g} s"


def _child_doc(ref: str, stdout: str, stderr: str, returncode: int) -> dict:
    """`_child`'s document from what the child printed, or the sentence for a child that printed none."""
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"ok": False, "error": f"introspecting {ref} exited with code {returncode}: {tail}"}


# What importing an ASAP app costs is mostly asap-protocol's own dependencies: these modules are ~90 % of
# `import asap.transport` (asap-protocol 2.5). `_many` imports them once and forks a child per app; a name
# missing here only costs that child its import. asap-protocol itself is not imported before the fork:
# importing it builds a default app from the ASAP_* environment, and each app's environment is its own.
PRELOAD = ("asyncio", "fastapi", "fastapi.responses", "starlette.middleware.base", "pydantic", "httpx", "structlog",
           "limits", "ulid", "aiosqlite", "joserfc.jwt", "authlib.integrations.httpx_client",
           "cryptography.hazmat.primitives.serialization", "opentelemetry.sdk.resources", "opentelemetry.sdk.trace",
           "opentelemetry.instrumentation.fastapi", "opentelemetry.instrumentation.httpx")


def _many() -> int:
    """Introspect several apps: a JSON list of requests on stdin (ref, app_path, app_env, drop_env,
    timeout), PRELOAD imported once, then one forked child per app (at most a CPU's worth at once), each
    with the environment, path and working folder a child of its own would have had. On stdout, a JSON
    line per request as its child ends: {"i": its index, "doc": `_child`'s document}."""
    requests = json.load(sys.stdin)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not installed here: the app's own import will say so
            pass
    preloaded = {m.partition(".")[0] for m in sys.modules}
    waiting, running = list(enumerate(requests)), {}
    while waiting or running:
        while waiting and len(running) < max(2, os.cpu_count() or 2):
            i, req = waiting.pop(0)
            result, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            pid = os.fork()
            if pid == 0:
                _forked(req, result.fileno(), err.fileno(), preloaded)
            running[pid] = (i, req, result, err, time.monotonic() + req["timeout"])
        for pid, (i, req, result, err, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() < deadline:
                continue
            if not done:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                doc = {"ok": False, "error": _too_slow(req["ref"], req["timeout"])}
            else:
                doc = _child_doc(req["ref"], _read_back(result), _read_back(err), os.waitstatus_to_exitcode(status))
            result.close()
            err.close()
            del running[pid]
            out.write(json.dumps({"i": i, "doc": doc}, default=str) + "\n")
            out.flush()
        time.sleep(0.02)
    return 0


def _forked(req: dict, result_fd: int, err_fd: int, preloaded: set[str]) -> None:
    """In the forked child: become what `_introspect_child` starts, answer into `result_fd`, exit."""
    code = 1
    try:
        os.dup2(err_fd, 2)
        os.dup2(result_fd, 1)
        app_path = Path(req["app_path"]) if req["app_path"] else None
        env = child_env(app_path, req["app_env"], tuple(req["drop_env"]))
        if app_path is not None:
            os.chdir(app_path)
            # a module of the app's own folder that a preloaded one would hide: a fresh interpreter, as before
            if any((app_path / n).is_dir() or (app_path / f"{n}.py").exists() for n in preloaded):
                os.execve(sys.executable, [sys.executable, "-m", "asap_runbook.introspect", req["ref"]], env)
            sys.path.insert(0, str(app_path))
        os.environ.clear()
        os.environ.update(env)
        code = _child(req["ref"])
    except BaseException as e:  # noqa: BLE001 - before the app's import (a folder gone): its one line
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _read_back(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--many":
        raise SystemExit(_many())
    if len(sys.argv) == 3 and sys.argv[1] == "--snapshots":
        raise SystemExit(_snapshot_child(sys.argv[2]))
    if len(sys.argv) != 2:
        print("usage: python -m asap_runbook.introspect module:attr", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_child(sys.argv[1]))
