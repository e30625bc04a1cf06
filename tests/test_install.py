"""An installable tool: the wheel carries notebooks/, params/ and examples/, and the installed
`asap-runbook` runs from any directory, writing nothing into site-packages.

The wheel test builds from a copy of this checkout, installs it with --no-deps into a fresh
virtualenv outside the checkout, and makes the dependencies visible without reinstalling them:
a .pth line naming this venv's site-packages (a path line only extends sys.path; the .pth files
in that directory, among them the editable install's finder, are not processed, so the wheel's
copy of asap_runbook is the one imported)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from asap_runbook import _paths
from asap_runbook.source import python_files

from conftest import REPO


def test_pyproject_lists_every_subpackage_and_bundles_the_top_level_dirs():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "asap_runbook").rglob("__init__.py"))
    assert sorted(p for p in setuptools["packages"] if not p.startswith("asap_runbook._bundled.")) == found
    assert setuptools["package-dir"] == {f"asap_runbook._bundled.{n}": n for n in _paths.SHIPPED}


def test_checkout_resolves_to_the_top_level_dirs():
    assert _paths.checkout() == REPO
    for name in _paths.SHIPPED:
        assert _paths.shipped(name) == REPO / name
    assert _paths.default_outputs() == REPO / "outputs"


def test_source_scan_skips_venv_dirs_only_inside_the_root(tmp_path):
    """Bundled examples live under site-packages: the scan must still see them."""
    root = tmp_path / "venv" / "lib" / "site-packages" / "asap_runbook" / "_bundled" / "examples" / "src"
    (root / ".venv").mkdir(parents=True)
    (root / "app.py").write_text("x = 1\n")
    (root / ".venv" / "vendored.py").write_text("y = 2\n")
    assert python_files(root) == [root / "app.py"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("install")
    # earlier tests in this process point PYTHONPATH at the checkout (runner._kernel_imports_this_package):
    # pip would then take the checkout's package as already installed
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH", "VIRTUAL_ENV")}
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.whl",
        "confirmations"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(src)], capture_output=True, text=True, timeout=300, env=clean)
    assert build.returncode == 0, build.stderr
    (wheel,) = (work / "dist").glob("asap_runbook-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=clean)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True, env=clean).strip())
    (purelib / "_asap_runbook_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip would also have put the dependencies' data files under the venv's share/ (nbconvert's
    # templates); sharing site-packages through a .pth does not, so link them
    (venv / "share" / "jupyter").mkdir(parents=True)
    (venv / "share" / "jupyter" / "nbconvert").symlink_to(Path(sys.prefix) / "share" / "jupyter" / "nbconvert")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300, env=clean)
    assert inst.returncode == 0, inst.stderr
    cwd = work / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "JUPYTER_PATH", "VIRTUAL_ENV") and not k.startswith("ASAP_DEMO_")}

    def tool(*args, timeout=120):
        return subprocess.run([str(venv / "bin" / "asap-runbook"), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    return type("Installed", (), {"venv": venv, "python": python, "purelib": purelib, "cwd": cwd, "env": env,
                                  "tool": staticmethod(tool)})


def test_the_wheels_copy_is_imported_and_carries_the_files(installed):
    probe = ("import json, asap_runbook, asap_runbook._paths as p; print(json.dumps({'file': asap_runbook.__file__, "
             "'checkout': str(p.checkout()), 'dirs': {n: str(p.shipped(n)) for n in p.SHIPPED}}))")
    doc = json.loads(subprocess.check_output([installed.python, "-c", probe], cwd=installed.cwd, env=installed.env,
                                             text=True))
    assert Path(doc["file"]).is_relative_to(installed.purelib)
    assert doc["checkout"] == "None"
    bundled = installed.purelib / "asap_runbook" / "_bundled"
    assert doc["dirs"] == {n: str(bundled / n) for n in _paths.SHIPPED}
    for name in _paths.SHIPPED:  # the same files as the checkout's directories
        ours = sorted(str(p.relative_to(REPO / name)) for p in (REPO / name).rglob("*")
                      if p.is_file() and not {"__pycache__", "confirmations"} & set(p.parts)
                      and not any(part.startswith(".") for part in p.relative_to(REPO).parts))
        assert sorted(str(p.relative_to(bundled / name)) for p in (bundled / name).rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts) == ours  # pip byte-compiles the examples


def test_installed_version_list_validate(installed):
    version = installed.tool("--version")
    assert (version.returncode, version.stdout) == (0, "asap-runbook 0.1.0\n")
    listing = installed.tool("list")
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 1 + 61
    example = installed.purelib / "asap_runbook" / "_bundled" / "params" / "example.yaml"
    valid = installed.tool("validate", str(example))
    assert valid.returncode == 0
    assert valid.stdout.splitlines()[0] == f"{example}: valid; 1 target(s): orders-agent. Nothing was contacted."
    assert "orders-agent: 34 item(s) cannot be verified with these parameters:" in valid.stdout


def test_installed_demo_runs_from_another_directory(installed):
    """`asap-runbook demo --no-prometheus` (Prometheus would add its scrape wait): the evidence lands in
    ./outputs of the working directory, the kernel is this venv's python, site-packages is untouched."""
    package = installed.purelib / "asap_runbook"
    before = sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)
    proc = installed.tool("demo", "--no-prometheus", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    outputs = installed.cwd / "outputs"
    (run_dir,) = [p for p in outputs.iterdir() if p.is_dir() and (p / "manifest.json").exists()]
    assert (run_dir / "index.html").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["params_file"] == str(outputs / "demo.params.yaml")
    assert results["sections"] == ["security", "monitoring", "scaling", "resilience"]
    assert len(results["results"]) == 61 * 3  # every item on the three reference targets
    # the copy of the demo parameters points into the installed package's examples
    params = (outputs / "demo.params.yaml").read_text()
    assert f"source_dir: {package / '_bundled' / 'examples' / 'hardened' / 'src'}\n" in params
    assert "prometheus:" not in params
    provenance = json.loads((run_dir / "sign-off.json").read_text())
    assert provenance["interpreter"]["executable"] == str(installed.python)
    assert provenance["git_commit"].startswith("none (installed package")  # no git repository around it is ours
    kernel = json.loads((installed.venv / "share" / "jupyter" / "kernels" / "asap-runbook" / "kernel.json").read_text())
    assert kernel["argv"][0] == str(installed.python)
    assert sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts) == before
