"""SEC-AUTH-3, SEC-HANDLER-2, SEC-HANDLER-3 verdicts from source trees written the way teams write
them: os.environ.get fallbacks, open(BASE / data["file"]), f-string and %-style logging. No server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from asap_runbook import _source_scan
from asap_runbook.checks.security import judge_logs_sanitized, judge_no_hardcoded_tokens, judge_path_traversal
from asap_runbook.results import Status

REPO = Path(__file__).resolve().parents[2]

STOCK_HANDLER = """
    import logging
    import os
    from pathlib import Path

    from asap.models.envelope import Envelope

    API_TOKEN = os.environ.get("API_TOKEN", "dev-token-please-change")
    REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    BASE = Path("/srv/reports")
    log = logging.getLogger(__name__)


    async def handle(envelope: Envelope, manifest) -> Envelope:
        data = envelope.payload_dict["input"]
        log.info(f"task received: {data}")
        log.info("skill %s for %s" % (envelope.payload_dict["skill_id"], envelope.sender))
        with open(BASE / data["file"]) as fh:
            report = fh.read()
        log.debug("payload was %s", envelope.payload_dict)
        return report
"""

CAREFUL_HANDLER = """
    import logging
    import os
    from pathlib import Path

    from asap.observability import sanitize_for_logging

    API_TOKEN = os.environ["API_TOKEN"]
    BASE = Path("/srv/reports").resolve()
    log = logging.getLogger(__name__)


    async def handle(envelope, manifest):
        data = envelope.payload_dict["input"]
        log.info("task received %s", sanitize_for_logging(data))
        log.info(f"skill {envelope.payload_dict['skill_id']} from {envelope.sender}, {len(data)} fields")
        path = (BASE / data["file"]).resolve()
        if not path.is_relative_to(BASE):
            raise ValueError("outside the reports directory")
        return path.read_text()
"""

NO_HANDLERS = """
    def add(a, b):
        return a + b
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "agent.py").write_text(textwrap.dedent(text))
    return tmp_path


def test_stock_style_handler_fails_all_three(tmp_path):
    root = write(tmp_path, STOCK_HANDLER)
    cred = judge_no_hardcoded_tokens(_source_scan.hardcoded_credentials([root]), [str(root)])
    assert cred.status is Status.FAIL and "agent.py:8" in cred.summary  # API_TOKEN fallback, not REDIS_URL
    assert "agent.py:9" not in cred.summary
    trav = judge_path_traversal(_source_scan.file_sinks(root), str(root))
    assert trav.status is Status.FAIL and "agent.py:18" in trav.summary
    logs = judge_logs_sanitized(_source_scan.unsanitized_logging(root), [], str(root))
    # the f-string (line 16) and the extra %s argument (line 20) carry the payload; line 17 logs ids only
    assert logs.status is Status.FAIL and "agent.py:16" in logs.summary and "agent.py:20" in logs.summary
    assert "agent.py:17" not in logs.summary


def test_careful_handler_passes_and_says_what_was_scanned(tmp_path):
    root = write(tmp_path, CAREFUL_HANDLER)
    cred = judge_no_hardcoded_tokens(_source_scan.hardcoded_credentials([root]), [str(root)])
    assert cred.status is Status.PASS and "API_TOKEN" in cred.summary and "1 Python" in cred.summary
    trav = judge_path_traversal(_source_scan.file_sinks(root), str(root))
    assert trav.status is Status.PASS and "1 function(s) taking request data" in trav.summary
    logs = judge_logs_sanitized(_source_scan.unsanitized_logging(root), [], str(root))
    assert logs.status is Status.PASS and "1 log call(s) with request data" in logs.summary


def test_zero_matches_in_code_without_handlers_is_not_a_pass(tmp_path):
    root = write(tmp_path, NO_HANDLERS)
    trav = judge_path_traversal(_source_scan.file_sinks(root), str(root))
    logs = judge_logs_sanitized(_source_scan.unsanitized_logging(root), [], str(root))
    assert trav.status is Status.SKIP and "targets[].source_dir" in trav.summary
    assert logs.status is Status.SKIP and "targets[].source_dir" in logs.summary


def test_config_files_alone_do_not_pass_the_credential_scan(tmp_path):
    (tmp_path / "values.yaml").write_text("replicas: 3\nimage: agent:1.2\n")
    scan = _source_scan.hardcoded_credentials([tmp_path])
    assert judge_no_hardcoded_tokens(scan, [str(tmp_path)]).status is Status.SKIP


def test_debug_switch_in_deployment_files_fails():
    rep = _source_scan.LogReport(1, 3, [], [], [], 2, ["a.py:3 handle()"])
    r = judge_logs_sanitized(rep, ["agent.yaml: ASAP_DEBUG: \"true\""], "src")
    assert r.status is Status.FAIL and "debug logging" in r.summary


@pytest.mark.parametrize("tree,expected", [("hardened", Status.PASS), ("misconfigured", Status.FAIL)])
def test_example_trees_keep_their_verdicts(tree, expected):
    root = REPO / "examples" / tree / "src"
    assert judge_logs_sanitized(_source_scan.unsanitized_logging(root), [], str(root)).status is expected
    assert judge_path_traversal(_source_scan.file_sinks(root), str(root)).status is expected
    assert judge_no_hardcoded_tokens(_source_scan.hardcoded_credentials([root]), [str(root)]).status is expected


def test_reference_handlers_are_told_apart():
    """The reference agents' running source: the misconfigured handler logs req.input raw, the hardened one
    through sanitize_for_logging."""
    rep = _source_scan.unsanitized_logging(REPO / "asap_runbook" / "reference")
    assert [h.file for h in rep.unsanitized] == ["misconfigured_handlers.py"]
    assert any(h.file == "hardened_app.py" for h in rep.sanitized)


# ---------------------------------------------------------------- SEC-AUTH-5: the clients half
from asap_runbook.checks.security import _client_auth, judge_client_auth  # noqa: E402

CLIENTS = """
    import os
    from asap.transport import ASAPClient

    SETTINGS = {"timeout": 10.0}
    signed = ASAPClient("https://billing.internal", auth_token=os.environ["BILLING_TOKEN"], **SETTINGS)
    anonymous = ASAPClient("https://inventory.internal", timeout=5.0)
"""


def test_client_without_auth_token_fails_the_whole_item(tmp_path):
    clients = _client_auth(write(tmp_path, CLIENTS))
    assert [c["auth_token"] for c in clients] == ["set", "absent"]
    r = judge_client_auth("urn:asap:agent:x", "T", "passed", "HTTP 200 -32012", "refused", [], clients)
    assert r.status is Status.FAIL and "agent.py:7" in r.summary


@pytest.mark.parametrize("clients,expected,needle", [
    (None, Status.PASS, "not checked (targets[].source_dir is not set)"),
    ([], Status.PASS, "builds no ASAPClient"),
    ([{"client": "a.py:3", "auth_token": "set"}], Status.PASS, "pass auth_token="),
    ([{"client": "a.py:3", "auth_token": "unknown"}], Status.MANUAL, "a.py:3"),
])
def test_client_auth_verdicts(clients, expected, needle):
    r = judge_client_auth("urn:asap:agent:x", "T", "passed", "HTTP 200 -32012", "refused", [], clients)
    assert r.status is expected and needle in r.summary, r.summary


def test_wire_failures_come_first():
    assert judge_client_auth("u", "T", "refused", "HTTP 200 -32600", "refused", [], None).status is Status.FAIL
    assert judge_client_auth("u", "T", "sender", "x", "refused", [], None).status is Status.FAIL
    assert judge_client_auth("u", "T", "unknown", "HTTP 502", "refused", [], None).status is Status.ERROR
    assert judge_client_auth("u", "T", "passed", "x", "passed", [], None).status is Status.WARN


def test_a_source_tree_is_scanned_once_until_a_file_in_it_changes(tmp_path, monkeypatch):
    """A fleet's targets of one app share the scan of its tree; an edited or added file is read again, and
    each caller gets its own copy of the report."""
    import os
    monkeypatch.setattr(_source_scan, "_scans", {})
    parsed = []
    real = _source_scan.parsed_python_files
    monkeypatch.setattr(_source_scan, "parsed_python_files", lambda root, broken: parsed.append(root) or real(root, broken))
    app = tmp_path / "app.py"
    app.write_text('API_KEY = "sk-live-0123456789abcdef0123"\n')
    first = _source_scan.hardcoded_credentials([tmp_path])
    first.hits.clear()  # a caller's copy: the next caller's report is whole
    again = _source_scan.hardcoded_credentials([tmp_path])
    assert len(parsed) == 1 and len(again.hits) == 1
    app.write_text('API_KEY = os.environ["API_KEY"]\nimport os\n')
    os.utime(app, ns=(1, 1))  # a new version even within the file system's timestamp granularity
    assert _source_scan.hardcoded_credentials([tmp_path]).hits == [] and len(parsed) == 2
    (tmp_path / "other.py").write_text('TOKEN = "ghp_0123456789abcdefghijklmnopqrstuvwxyz01"\n')
    assert len(_source_scan.hardcoded_credentials([tmp_path]).hits) == 1 and len(parsed) == 3
