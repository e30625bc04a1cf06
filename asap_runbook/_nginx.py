"""nginx configuration for the Security checks, parsed by crossplane (nginx's own Python parser).

crossplane follows `include` (conf.d/*.conf, sites-enabled/*, relative to the main file's
directory, as nginx resolves them without -p), so a configuration split across files reads as
nginx reads it. On top of its tree this module answers: the effective `client_max_body_size`
of every server and location (nginx default 1m when unset; 0 means unlimited), where a
directive is used (`limit_req`, `add_header Strict-Transport-Security`, `return 301`), each
with file:line.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import crossplane

NGINX_DEFAULT_BODY = 1024 * 1024  # client_max_body_size default: 1m
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


class NginxParseError(ValueError):
    pass


@dataclass
class Block:
    name: str
    args: list[str]
    directives: list[tuple[str, list[str], str]] = field(default_factory=list)  # (name, args, "file:line")
    children: list["Block"] = field(default_factory=list)
    line: str = ""
    files: list[str] = field(default_factory=list)  # on the root: every file read (the main one and its includes)

    def get(self, name: str) -> tuple[list[str], str] | None:
        found = None
        for d, args, line in self.directives:
            if d == name:
                found = (args, line)
        return found


def _tree(items: list[dict], into: Block, configs: list[dict], file: str) -> None:
    for d in items:
        where = f"{Path(file).name}:{d.get('line')}"
        if d["directive"] == "include" and "includes" in d:
            for i in d["includes"]:  # inline the included files where the include stands
                _tree(configs[i]["parsed"], into, configs, configs[i]["file"])
            continue
        if "block" in d:
            child = Block(d["directive"], list(d.get("args", [])), line=where)
            _tree(d["block"], child, configs, file)
            into.children.append(child)
        else:
            into.directives.append((d["directive"], list(d.get("args", [])), where))


# A fleet's targets behind one proxy name one configuration: parsed once per process while none of its
# files changed (crossplane was ~3 % of a security kernel's CPU, parsing the same files per target)
_loaded: dict[str, tuple[tuple, Block]] = {}


def _versions(files: list[str]) -> tuple:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def load(path: Path) -> Block:
    """The configuration at `path` with every include inlined; NginxParseError names the file and line.
    Callers read the tree and never change it: it is shared until one of its files changes."""
    hit = _loaded.get(str(path))
    if hit is not None and None not in hit[0] and hit[0] == _versions(hit[1].files):
        return hit[1]
    root = _parse(path)
    _loaded[str(path)] = (_versions(root.files), root)
    return root


def _parse(path: Path) -> Block:
    if not Path(path).is_file():
        raise NginxParseError(f"{path} is not a file")
    try:
        payload = crossplane.parse(str(path), catch_errors=False, check_ctx=False, check_args=False)
    except (crossplane.errors.NgxParserBaseException, OSError) as e:
        raise NginxParseError(str(e)) from None
    if payload["status"] != "ok" or not payload["config"]:
        errs = payload.get("errors") or [{"error": "unreadable"}]
        raise NginxParseError(errs[0].get("error", "could not parse"))
    root = Block("main", [], files=[c["file"] for c in payload["config"]])
    _tree(payload["config"][0]["parsed"], root, payload["config"], payload["config"][0]["file"])
    return root


def parse(text: str) -> Block:
    """A configuration given as text (no includes to follow)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "nginx.conf"
        p.write_text(text)
        return load(p)


def size_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    if not m:
        raise NginxParseError(f"not an nginx size: {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass
class BodyLimit:
    where: str          # "server 127.0.0.1:443 ssl" / "... location /"
    value: str | None   # as written (None: inherited nginx default)
    bytes: int          # 0 = unlimited
    line: str | None    # file:line of the directive in effect
    proxies: bool       # the block proxies to an upstream (the agent)


_PASSES = ("proxy_pass", "uwsgi_pass", "fastcgi_pass", "grpc_pass")


def body_limits(root: Block) -> list[BodyLimit]:
    """The effective client_max_body_size of every server and its locations (nested locations included)."""
    def eff(block: Block, inherited: tuple[str | None, int, str | None]):
        got = block.get("client_max_body_size")
        if got and got[0]:
            return got[0][0], size_bytes(got[0][0]), got[1]
        return inherited

    out: list[BodyLimit] = []
    default = (None, NGINX_DEFAULT_BODY, None)

    def locations(block: Block, prefix: str, inherited):
        for loc in [b for b in block.children if b.name == "location"]:
            v = eff(loc, inherited)
            where = f"{prefix} location {' '.join(loc.args)}"
            out.append(BodyLimit(where, v[0], v[1], v[2], any(loc.get(p) for p in _PASSES)))
            locations(loc, where, v)

    for http in [b for b in root.children if b.name == "http"] or [root]:
        h = eff(http, default)
        for server in [b for b in http.children if b.name == "server"]:
            listen = " ".join(server.get("listen")[0]) if server.get("listen") else "?"
            s = eff(server, h)
            proxies = any(server.get(p) for p in _PASSES)
            if not [b for b in server.children if b.name == "location"] or proxies:
                out.append(BodyLimit(f"server {listen}", s[0], s[1], s[2], proxies))
            locations(server, f"server {listen}", s)
    return out


def uses(root: Block, directive: str, first_arg: str | None = None) -> list[str]:
    """file:line of every `directive` (whose first argument is `first_arg`, case-insensitive, if given)."""
    lines = []

    def walk(b: Block):
        lines.extend(line for d, args, line in b.directives if d == directive
                     and (first_arg is None or (args and args[0].lower() == first_arg.lower())))
        for c in b.children:
            walk(c)
    walk(root)
    return lines
