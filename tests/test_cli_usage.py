"""Bad usage is one sentence and exit 2, before anything runs (issue: the smaller defects)."""

import pytest

from asap_runbook.cli import main


@pytest.fixture
def params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("targets:\n  - {name: api, base_url: 'https://127.0.0.1:9'}\n")
    return p


def one_sentence(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_out_naming_a_file(params, tmp_path, capsys):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    assert main(["run", "--params", str(params), "--out", str(f)]) == 2
    one_sentence(capsys, "is a file, not a folder")
    assert f.read_text() == "x"


def test_out_under_a_file(params, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "--params", str(params), "--out", str(f / "runs"), "--sections", "security"]) == 2
    one_sentence(capsys, "cannot create the run directory")


def test_empty_sections(params, tmp_path, capsys):
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o"), "--sections", ""]) == 2
    one_sentence(capsys, "--sections is empty")
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "o"), "--sections", " , "]) == 2
    one_sentence(capsys, "--sections is empty")
    assert not (tmp_path / "o").exists()


def test_waivers_file_that_does_not_exist(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("waivers_file: waivers.yaml\ntargets:\n  - {name: api, base_url: 'https://127.0.0.1:9'}\n")
    assert main(["run", "--params", str(p), "--out", str(tmp_path / "o")]) == 2
    one_sentence(capsys, "waivers file", "does not exist")
    assert not (tmp_path / "o").exists()


def test_a_reader_that_leaves_early_is_not_an_error():
    """`asap-runbook list | head -1`: a closed pipe ends the command quietly, with no traceback."""
    import os
    import subprocess
    import sys
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone: every write meets a broken pipe
    try:
        proc = subprocess.run([sys.executable, "-m", "asap_runbook", "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_command_does_not_build_jsonschemas_iri_grammars():
    """rfc3987_syntax (installed beside jsonschema) costs seconds at import; commands that read or
    write notebooks do without it, and nbformat still validates them."""
    import importlib.machinery
    import subprocess
    import sys
    # PathFinder looks on disk: this process's cli.main already put None in sys.modules for it
    if importlib.machinery.PathFinder.find_spec("rfc3987_syntax") is None:
        pytest.skip("rfc3987_syntax is not installed here: nothing to avoid")
    probe = ("import sys; from asap_runbook.cli import main; main(['--version'])\n"
             "import nbformat; nbformat.validate(nbformat.v4.new_notebook())\n"
             "print('loaded' if sys.modules.get('rfc3987_syntax') else 'not loaded')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "not loaded"
