"""Just enough of an nginx configuration parser for the Security checks.

Reads blocks and directives (no `include` following), and answers: the effective
`client_max_body_size` of every server and location (nginx default 1m when unset; 0 means
unlimited), and whether `limit_req` is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

NGINX_DEFAULT_BODY = 1024 * 1024  # client_max_body_size default: 1m
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


class NginxParseError(ValueError):
    pass


@dataclass
class Block:
    name: str
    args: list[str]
    directives: list[tuple[str, list[str], int]] = field(default_factory=list)  # (name, args, line)
    children: list["Block"] = field(default_factory=list)
    line: int = 0

    def get(self, name: str) -> tuple[list[str], int] | None:
        found = None
        for d, args, line in self.directives:
            if d == name:
                found = (args, line)
        return found


def _tokens(text: str):
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c, line
            i += 1
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    j += 1
                j += 1
            yield text[i + 1:j], line
            line += text[i:j].count("\n")
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};":
                j += 1
            yield text[i:j], line
            i = j


def parse(text: str) -> Block:
    root = Block("main", [])
    stack = [root]
    words: list[str] = []
    first_line = 0
    for tok, line in _tokens(text):
        if tok == ";":
            if words:
                stack[-1].directives.append((words[0], words[1:], first_line))
            words = []
        elif tok == "{":
            if not words:
                raise NginxParseError(f"line {line}: block without a name")
            b = Block(words[0], words[1:], line=first_line)
            stack[-1].children.append(b)
            stack.append(b)
            words = []
        elif tok == "}":
            if len(stack) == 1:
                raise NginxParseError(f"line {line}: unbalanced '}}'")
            stack.pop()
        else:
            if not words:
                first_line = line
            words.append(tok)
    if len(stack) != 1:
        raise NginxParseError("unbalanced '{': the file ends inside a block")
    return root


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
    line: int | None
    proxies: bool       # the block proxies to an upstream (the agent)


def body_limits(root: Block) -> list[BodyLimit]:
    """The effective client_max_body_size of every server and its locations."""
    def eff(block: Block, inherited: tuple[str | None, int, int | None]):
        got = block.get("client_max_body_size")
        if got:
            return got[0][0] if got[0] else "", size_bytes(got[0][0]), got[1]
        return inherited

    out: list[BodyLimit] = []
    default = (None, NGINX_DEFAULT_BODY, None)
    for http in [b for b in root.children if b.name == "http"] or [root]:
        h = eff(http, default)
        for server in [b for b in http.children if b.name == "server"]:
            listen = " ".join(server.get("listen")[0]) if server.get("listen") else "?"
            s = eff(server, h)
            proxies = bool(server.get("proxy_pass") or server.get("uwsgi_pass") or server.get("fastcgi_pass"))
            locs = [b for b in server.children if b.name == "location"]
            if not locs or proxies:
                out.append(BodyLimit(f"server {listen}", s[0], s[1], s[2], proxies))
            for loc in locs:
                v = eff(loc, s)
                lp = bool(loc.get("proxy_pass") or loc.get("uwsgi_pass") or loc.get("fastcgi_pass")
                          or loc.get("grpc_pass"))
                out.append(BodyLimit(f"server {listen} location {' '.join(loc.args)}", v[0], v[1], v[2], lp))
    return out


def uses(root: Block, directive: str) -> list[int]:
    """Line numbers where `directive` appears anywhere."""
    lines = []

    def walk(b: Block):
        lines.extend(line for d, _, line in b.directives if d == directive)
        for c in b.children:
            walk(c)
    walk(root)
    return lines


def load(path: Path) -> Block:
    return parse(Path(path).read_text(errors="replace"))
