"""SEC-SIZE-2 and the nginx evidence of SEC-RATE-3 / SEC-TLS-4 / SEC-TLS-5 on a configuration split
the way distributions ship it (conf.d/*.conf, sites-enabled/*): crossplane follows the includes."""

from __future__ import annotations

from pathlib import Path

import pytest

from asap_runbook import _nginx
from asap_runbook.checks.security import judge_proxy_body_limit
from asap_runbook.results import Status

SPLIT = Path(__file__).parent / "data" / "nginx-split" / "nginx.conf"


def test_includes_are_followed():
    root = _nginx.load(SPLIT)
    assert {Path(f).name for f in root.files} == {"nginx.conf", "mime.types", "limits.conf", "orders-agent"}
    assert _nginx.uses(root, "limit_req") == ["orders-agent:15"]
    assert _nginx.uses(root, "add_header", "strict-transport-security") == ["orders-agent:12"]
    assert _nginx.uses(root, "return") == ["orders-agent:4"]


def test_body_limit_inherited_from_an_included_http_level_file():
    limits = [b for b in _nginx.body_limits(_nginx.load(SPLIT)) if b.proxies]
    got = {b.where: (b.bytes, b.line) for b in limits}
    assert got == {"server 443 ssl location /asap": (10 * 1024 ** 2, "limits.conf:2"),
                   "server 443 ssl location /": (1024 ** 2, "orders-agent:19")}


@pytest.mark.parametrize("agent_limit,expected", [(10 * 1024 ** 2, Status.PASS), (1024 ** 2, Status.FAIL)])
def test_size2_verdict_over_the_split_config(agent_limit, expected):
    root = _nginx.load(SPLIT)
    r = judge_proxy_body_limit([b for b in _nginx.body_limits(root) if b.proxies], root.files, agent_limit, "test")
    assert r.status is expected, r.summary
    if expected is Status.FAIL:
        assert "location /asap: 10m" in r.summary


def test_unlimited_and_no_proxy():
    root = _nginx.parse("http { server { listen 443 ssl; client_max_body_size 0; location / { proxy_pass http://a; } } }")
    limits = [b for b in _nginx.body_limits(root) if b.proxies]
    assert judge_proxy_body_limit(limits, root.files, 1 << 20, "t").status is Status.FAIL
    static = _nginx.parse("http { server { listen 80; location / { root /srv; } } }")
    assert judge_proxy_body_limit([b for b in _nginx.body_limits(static) if b.proxies], static.files, 1,
                                  "t").status is Status.ERROR


def test_missing_include_is_one_sentence(tmp_path):
    (tmp_path / "nginx.conf").write_text("http { include sites-enabled/orders; }\n")
    with pytest.raises(_nginx.NginxParseError, match="orders"):
        _nginx.load(tmp_path / "nginx.conf")


def test_a_configuration_is_parsed_once_until_one_of_its_files_changes(tmp_path, monkeypatch):
    """A fleet's targets behind one proxy share its parse; an edited include is read again."""
    import os
    import shutil
    conf_dir = tmp_path / "nginx"
    shutil.copytree(SPLIT.parent, conf_dir)
    parses = []
    real = _nginx._parse
    monkeypatch.setattr(_nginx, "_parse", lambda p: parses.append(p) or real(p))
    first = _nginx.load(conf_dir / "nginx.conf")
    assert _nginx.load(conf_dir / "nginx.conf") is first and len(parses) == 1
    limits = next(Path(f) for f in first.files if Path(f).name == "limits.conf")
    limits.write_text(limits.read_text().replace("10m", "20m"))
    os.utime(limits, ns=(1, 1))  # a different version even within the file system's timestamp granularity
    again = _nginx.load(conf_dir / "nginx.conf")
    assert len(parses) == 2 and again is not first
    assert {b.bytes for b in _nginx.body_limits(again) if b.line == "limits.conf:2"} == {20 * 1024 ** 2}
