"""The `asap-runbook` console script.

Exit codes (the contract, tested): 0 ready, 1 not ready (a blocking fail), 2 bad usage or
parameters, 3 incomplete (errors or items awaiting a person, no blocking fail).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import _paths
from .errors import RunbookError, UsageError
from .results import ExitCode, FailOn


def _err(message: str) -> None:
    print(f"asap-runbook: {message}", file=sys.stderr)


def cmd_run(args) -> int:
    from .runner import run
    sections = None
    if args.sections is not None:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        if not sections:
            raise UsageError("--sections is empty: name at least one of security, monitoring, scaling, resilience "
                             "(or leave --sections out to run the whole checklist).")
    code, _ = run(args.params, args.out, sections, sign_off_by=args.sign_off_by, signing_key=args.signing_key,
                  fail_on=FailOn(args.fail_on), executor=args.executor, unit_targets=args.unit_targets)
    return code


def cmd_demo(args) -> int:
    """Start the reference deployment, run the runbook against it, stop everything."""
    from .reference import ReferenceDeployment
    from .runner import run
    from .runner import usable_out_dir
    out = usable_out_dir(args.out if args.out else _paths.default_outputs())
    params = Path(args.params) if args.params else None if args.fleet else _demo_params(out, not args.no_prometheus)
    signing_key = demo_signing_key(out)
    workdir = Path(tempfile.mkdtemp(prefix="asap-runbook-demo-"))
    print(f"starting the reference deployment in {workdir} ...")
    try:
        if args.fleet:  # one hardened + N-1 misconfigured agents, and a params file naming them all
            from .fleet import fleet_deployment
            deployment = fleet_deployment(workdir, args.fleet, prometheus=not args.no_prometheus)
        else:
            deployment = ReferenceDeployment(workdir, prometheus=not args.no_prometheus)
        with deployment as dep:
            os.environ.update(dep.env())
            if not args.no_prometheus:
                # the Monitoring checks read what Prometheus scraped: let it scrape every agent once
                from .reference.deployment import ReferenceDeploymentError
                try:
                    dep.wait_prometheus_targets(timeout=20.0)
                except ReferenceDeploymentError as e:
                    print(f"note: Prometheus has not scraped every reference agent yet ({e}); running anyway")
            if args.fleet and not args.params:
                from .fleet import fleet_params
                out.mkdir(parents=True, exist_ok=True)
                # a stable path in the outputs folder: the next `demo --fleet N` finds this run for drift
                params = fleet_params(dep, out / f"fleet-{args.fleet}.params.yaml")
                print(f"fleet of {args.fleet} agent(s); parameters written to {params}")
            print("reference deployment up: hardened " + dep.env()["ASAP_DEMO_HARDENED_URL"] +
                  ", misconfigured " + dep.env().get("ASAP_DEMO_MISCONFIGURED_URL", "(none)") +
                  ", stock " + dep.env().get("ASAP_DEMO_STOCK_URL", "(none)"))
            if args.serve:
                print("\n".join(dep.export_lines()))
                print("serving until Ctrl-C ...")
                try:
                    while True:
                        import time
                        time.sleep(3600)
                except KeyboardInterrupt:
                    return 0
            code, run_dir = run(params, out, None, signing_key=signing_key)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("reference deployment stopped.")
    why = "" if args.fleet == 1 else (" (the demo is expected to be 'not ready': the misconfigured target is there on"
                                      " purpose, and the stock one is asap-protocol at its defaults)")
    print(f"open {run_dir / 'index.html'}{why}")
    return 0 if code in (ExitCode.READY, ExitCode.NOT_READY, ExitCode.INCOMPLETE) else code


def demo_signing_key(out: Path) -> str:
    """The demo signs its evidence so a newcomer sees the whole chain (`verify` exits 0): with
    $ASAP_RUNBOOK_SIGNING_KEY when set, else a demo key made once in the outputs folder. Real runs
    use a key of their own (`asap-runbook keygen`)."""
    from .signing import KEY_ENV, keygen
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    key = out / ".demo-signing-key.pem"
    if not key.exists():
        keygen(key)
        print(f"made a demo signing key {key} (public half {key}.pub); for real runs make your own with "
              "`asap-runbook keygen PATH`")
    return str(key)


def _demo_params(out: Path, prometheus: bool) -> Path:
    """params/demo.yaml, or a copy of it in the outputs folder: when installed (what the demo records,
    confirmations beside the parameters, is written there, never into site-packages) and without
    Prometheus (the copy names none, so the checks that need it skip instead of failing to interpolate)."""
    shipped = _paths.shipped("params") / "demo.yaml"
    if _paths.checkout() and prometheus:
        return shipped
    from .params import copy_params
    return copy_params(shipped, out / "demo.params.yaml", "parameters of `asap-runbook demo` (the reference "
                       "deployment)" + ("" if prometheus else ", without Prometheus"),
                       without=() if prometheus else ("prometheus",))


def cmd_validate(args) -> int:
    """Check a parameters file without contacting anything; every problem, with its line and column."""
    from .params import check_params
    params, problems = check_params(args.params)
    if problems:
        for p in problems:
            print(f"{args.params}:{p.line}:{p.column}: {p.message}" if p.line else f"{args.params}: {p.message}")
        print(f"{len(problems)} problem(s) in {args.params}; nothing was contacted.")
        return ExitCode.BAD_USAGE
    names = ", ".join(t.name for t in params.targets)
    print(f"{args.params}: valid; {len(params.targets)} target(s): {names}. Nothing was contacted.")
    # the run's environment may differ from this shell's (CI secrets): a note, not a problem
    for name, param in params.prometheus.all_env_names() if params.prometheus else []:
        if name not in os.environ:
            print(f"note: {name} ({param}) is not set here; where it is not set, the checks that need it "
                  "end in error")
    from .inputs import coverage_offline
    missing = coverage_offline(params)
    for target in params.targets:  # items that will be skipped or in error there: say so before the run
        needs: dict[str, list[str]] = {}
        for t, item, entry in missing:
            if t == target.name:
                needs.setdefault(item, []).append(entry)
        if needs:
            print(f"{target.name}: {len(needs)} item(s) cannot be verified with these parameters:")
            for item, entries in needs.items():
                # parentheses keep "a or b, and c or d" from reading as "a or (b and c) or d"
                said = [e.replace(" + ", " and ").replace(" | ", " or ") for e in entries]
                print(f"  {item}: set {' and '.join(f'({s})' if len(said) > 1 and ' or ' in s else s for s in said)}")
    return 0


def cmd_init(args) -> int:
    from .starter import write_starter
    path, manifest = write_starter(args.url, args.out, args.token_env, args.ca_file, not args.no_tls_verify)
    print(f"wrote {path} for {manifest.get('id')} ({len((manifest.get('capabilities') or {}).get('skills') or [])} "
          f"skill(s)); review it, then: asap-runbook validate {path}")
    return 0


_VERIFIED_BY = {
    "probe": "black-box HTTP(S) requests to the running agent (targets[].base_url; token_env where auth is on)",
    "prometheus": "queries to your Prometheus (prometheus.url and targets[].prometheus_job; alerting rules from "
                  "prometheus.rules_api or rule_files when set)",
    "static": "files you point at, read and never executed (app, source_dir, nginx_conf, k8s_manifests, "
              "process_config, log_file)",
    "drill": "an opt-in action, for staging (targets[].active_probes.drills and the drills: commands)",
    "manual": "a person confirms, with evidence (asap-runbook confirm ITEM --by NAME --note TEXT --params FILE)",
}


def cmd_list(args) -> int:
    from .catalog import load_catalog
    items = [i for i in load_catalog() if (not args.section or i.section == args.section)
             and (not args.blocking or i.blocking)]
    rows = [("ID", "SECTION", "BLOCKING", "VERIFIED BY", "ITEM")]
    rows += [(i.id, i.section, "yes" if i.blocking else "no", str(i.verification), i.text) for i in items]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
    return 0


def cmd_explain(args) -> int:
    import textwrap
    from .catalog import load_catalog
    from .errors import UsageError
    try:
        item = load_catalog().get(args.item.strip().upper())
    except KeyError as e:
        raise UsageError(e.args[0] if e.args[0].endswith("?") else f"{e.args[0]}.") from None

    def field(label: str, text: str | None) -> None:
        if text:
            print(textwrap.fill(" ".join(text.split()), width=100, initial_indent=f"{label:<14}",
                                subsequent_indent=" " * 14, break_on_hyphens=False))
    print(f"{item.id}  {item.section_title} > {item.subsection}")
    print(textwrap.fill(item.text, width=100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))
    print()
    field("Blocking:", f"{'yes' if item.blocking else 'no'} (severity {item.severity})")
    field("Verified by:", f"{item.verification}: {_VERIFIED_BY[str(item.verification)]}")
    field("Why:", item.rationale)
    field("Remediation:", item.remediation)
    field("By hand:", item.manual_guidance)
    field("Notes:", item.notes)
    if not item.automated:
        field("Confirmation:", f"holds {item.confirmation_ttl_days} days")
    return 0


def cmd_diff(args) -> int:
    """What changed between two runs (RUN_A the base, RUN_B the newer)."""
    from . import drift
    out = Path(args.out)
    a, b = drift.load_run(drift.resolve_run(args.run_a, out)), drift.load_run(drift.resolve_run(args.run_b, out))
    d = drift.compare(a, b, found_by="the command line")
    print(drift.as_json(d) if args.json else drift.text(d, show_unchanged=args.unchanged))
    if args.fail_on_regression:
        worse = drift.worse(d)
        if worse:
            _err(worse)  # stderr: --json output stays one JSON document
            return ExitCode.NOT_READY
    return 0


def cmd_lab(args) -> int:
    """JupyterLab at the project root (notebooks/, params/, outputs/ side by side), or, installed from
    the wheel, at a working folder holding copies of the notebooks, params and examples."""
    from .runner import ensure_kernel
    ensure_kernel()
    root = _paths.checkout() or lab_folder(Path(args.dir))
    argv = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={root}",
            "--LabApp.default_url=/lab/tree/notebooks", *args.lab_args]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in argv:
        argv.append("--allow-root")  # CI machines and containers run as root
    print(f"JupyterLab at {root}: open notebooks/<section>.ipynb and walk it; runs go to {root / 'outputs'}")
    return subprocess.call(argv)


def lab_folder(folder: Path) -> Path:
    """A working folder for the lab when installed from the wheel: copies of notebooks/, params/ and
    examples/ (never overwriting what is there: a person may have edited them), outputs/ beside them."""
    try:
        for name in _paths.SHIPPED:
            if not (folder / name).exists():
                shutil.copytree(_paths.shipped(name), folder / name)
        (folder / "outputs").mkdir(exist_ok=True)
    except OSError as e:
        raise UsageError(f"--dir {folder}: cannot set up the lab's working folder ({e.strerror}).") from None
    return folder.resolve()


def cmd_finish(args) -> int:
    from .runner import finish
    code, _ = finish(args.run_dir, args.params, sign_off_by=args.sign_off_by, signing_key=args.signing_key,
                     fail_on=FailOn(args.fail_on))
    return code


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of agents (1 or more)")
    return int(text)


def cmd_confirm(args) -> int:
    from .confirmations import add_confirmation
    from .params import load_params
    params = load_params(args.params)
    names = [t.name for t in params.targets]
    if args.target and args.target not in names:
        raise UsageError(f"no target named {args.target!r} in {args.params}; choose from {', '.join(names)}.")
    from .confirmations import latest_run_of, verified_in_run
    run_dir = Path(args.run) if args.run else latest_run_of(Path(args.params), Path(args.out))
    if run_dir is not None:
        seen = verified_in_run(run_dir, args.item, args.target)
        if seen:
            raise UsageError(f"{args.item} was verified automatically in run {run_dir.name} on {', '.join(seen)}: "
                             "a confirmation cannot replace an observation (fix the finding, or waive it in the waivers file).")
    rec = add_confirmation(params.confirmations_file, args.item, args.by, target=args.target, note=args.note,
                           evidence_url=args.evidence, ttl_days=args.ttl_days)
    print(f"confirmed {rec.item} on {rec.target or 'every target'} by {rec.by}, valid until "
          f"{rec.expires_at():%Y-%m-%d} ({rec.ttl()} days); recorded in {params.confirmations_file}")
    return 0


def cmd_merge(args) -> int:
    from .merge import merge
    code, _ = merge(args.run_dirs, args.out, args.signing_key, FailOn(args.fail_on))
    return code


def cmd_keygen(args) -> int:
    from .signing import keygen
    key, pub, fp = keygen(args.path)
    print(f"private key {key} (keep it secret; point --signing-key or $ASAP_RUNBOOK_SIGNING_KEY at it)")
    print(f"public key  {pub} (give it to auditors: asap-runbook verify DIR --public-key {pub})")
    print(f"fingerprint {fp}")
    return 0


def cmd_verify(args) -> int:
    from .signing import load_public_key, verify
    pinned = load_public_key(args.public_key) if args.public_key else None
    v = verify(args.run_dir, pinned)
    for line in v.lines():
        print(line)
    if not v.intact:
        print(f"TAMPERED: {v.run_dir}")
        return ExitCode.TAMPERED
    if v.unsigned:
        print(f"UNSIGNED: {v.run_dir}: every file matches its manifest, but the manifest carries no signature")
        return ExitCode.UNSIGNED
    print(f"INTACT: {v.run_dir} (signed)")
    return ExitCode.READY


def cmd_sign_off(args) -> int:
    from .signing import load_signing_key, sign_off_run
    return sign_off_run(args.run_dir, args.by, load_signing_key(args.signing_key))


class _Version(argparse.Action):
    """--version, reading the installed version only when asked (runner is slow to import)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .runner import version
        print(f"asap-runbook {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from .catalog import SECTIONS
    p = argparse.ArgumentParser(prog="asap-runbook", description="Production-readiness runbook for ASAP agents.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="write a starter parameters file from an agent's manifest")
    i.add_argument("--url", required=True, help="the agent's base URL, e.g. https://orders-agent.example.com")
    i.add_argument("--out", metavar="FILE", help="where to write it (default: <agent>.params.yaml here; never overwritten)")
    i.add_argument("--token-env", metavar="NAME", help="the environment variable that will hold the bearer token")
    i.add_argument("--ca-file", metavar="PATH", help="the private CA that signs the agent's certificate")
    i.add_argument("--no-tls-verify", action="store_true", help="read the manifest past a certificate that does not verify")
    i.set_defaults(fn=cmd_init)

    va = sub.add_parser("validate", help="check a parameters file without contacting anything (0 valid, 2 invalid)")
    va.add_argument("params", metavar="PARAMS")
    va.set_defaults(fn=cmd_validate)

    ls = sub.add_parser("list", help="the checklist items: id, section, blocking, how verified, wording")
    ls.add_argument("--section", choices=SECTIONS)
    ls.add_argument("--blocking", action="store_true", help="only the items that block readiness")
    ls.set_defaults(fn=cmd_list)

    ex = sub.add_parser("explain", help="one item: wording, how it is verified, why, how to fix it")
    ex.add_argument("item", metavar="ITEM", help="checklist item id, e.g. SEC-TLS-1")
    ex.set_defaults(fn=cmd_explain)

    r = sub.add_parser("run", help="run the runbook against the targets in a parameters file")
    r.add_argument("--params", required=True, help="YAML parameters file")
    r.add_argument("--out", default="outputs", help="where run directories are written (default: outputs)")
    r.add_argument("--sections", help="comma-separated subset: security,monitoring,scaling,resilience")
    r.add_argument("--sign-off-by", metavar="NAME", help="sign the run off as NAME if it is ready (else: refused, with what blocks)")
    r.add_argument("--signing-key", metavar="PATH", help=f"Ed25519 key that signs manifest.json (default: ${'{'}ASAP_RUNBOOK_SIGNING_KEY{'}'})")
    r.add_argument("--fail-on", choices=[f.value for f in FailOn], default=FailOn.INCOMPLETE.value,
                   help="what makes the exit code non-zero (CI): blocking = a blocking fail only; incomplete "
                        "(default) = a blocking fail (1) or an incomplete run (3); fail = also any fail (1); "
                        "warn = also any warn (1). results.json keeps the readiness. See docs/ci.md")
    r.add_argument("--executor", metavar="dask://HOST:PORT", help="run the checks on a Dask cluster in units of "
                   "(section, group of targets); one run folder here, as a local run writes (docs/fleet.md)")
    r.add_argument("--unit-targets", type=_positive_int, metavar="N", help="targets per Dask work unit "
                   "(default: the fleet split over the workers' threads, at most 100)")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("confirm", help="record that a person confirmed a manual item")
    c.add_argument("item", help="checklist item id, e.g. MON-ALERT-4")
    c.add_argument("--target", help="target name (default: every target)")
    c.add_argument("--by", required=True, metavar="NAME", help="who confirms")
    c.add_argument("--note", required=True, help="what was checked")
    c.add_argument("--evidence", metavar="URL", help="link to the evidence (ticket, screenshot, runbook page)")
    c.add_argument("--ttl-days", type=int, help="how long the confirmation holds (default: the item's confirmation_ttl_days)")
    c.add_argument("--params", required=True, help="YAML parameters file (names the confirmations file)")
    c.add_argument("--run", metavar="RUN_DIR", help="the run whose findings this closes (default: the newest run of "
                   "--params under --out); an item it verified automatically cannot be confirmed")
    c.add_argument("--out", default="outputs", help="where runs are looked up (default: outputs)")
    c.set_defaults(fn=cmd_confirm)

    m = sub.add_parser("merge", help="merge runs made in different places (one per cluster or region) into one "
                                     "signed fleet report; each source run is verified and recorded")
    m.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    m.add_argument("--out", required=True, help="where the merged run directory is written")
    m.add_argument("--signing-key", metavar="PATH", help="default: $ASAP_RUNBOOK_SIGNING_KEY")
    m.add_argument("--fail-on", choices=[f.value for f in FailOn], default=FailOn.INCOMPLETE.value,
                   help="what makes the exit code non-zero, as for run")
    m.set_defaults(fn=cmd_merge)

    k = sub.add_parser("keygen", help="make an Ed25519 signing key (PATH, and PATH.pub)")
    k.add_argument("path")
    k.set_defaults(fn=cmd_keygen)

    v = sub.add_parser("verify", help="check a run directory: digests, signature, chain "
                                      "(0 intact and signed, 1 tampered, 4 intact but unsigned)")
    v.add_argument("run_dir")
    v.add_argument("--public-key", metavar="PATH", help="the key you trust (public or private PEM)")
    v.set_defaults(fn=cmd_verify)

    so = sub.add_parser("sign-off", help="sign off a finished run if it is ready")
    so.add_argument("run_dir")
    so.add_argument("--by", required=True, metavar="NAME")
    so.add_argument("--signing-key", metavar="PATH", help="default: $ASAP_RUNBOOK_SIGNING_KEY")
    so.set_defaults(fn=cmd_sign_off)

    d = sub.add_parser("demo", help="start the reference deployment, run the runbook on it, stop it")
    d.add_argument("--params", help="parameters file (default: params/demo.yaml)")
    d.add_argument("--out", help="where run directories are written (default: the checkout's outputs/, "
                   "or ./outputs when installed)")
    d.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus (nor its Alertmanager)")
    d.add_argument("--serve", action="store_true", help="start the deployment and keep it up (for JupyterLab)")
    d.add_argument("--fleet", type=_positive_int, metavar="N", help="a fleet of N reference agents (1 hardened, N-1 "
                   "misconfigured) and a parameters file for them in the outputs folder")
    d.set_defaults(fn=cmd_demo)

    df = sub.add_parser("diff", help="what changed between two runs: new failures, fixed, regressed, expired")
    df.add_argument("run_a", metavar="RUN_A", help="the earlier run: a run directory or a run id under --out")
    df.add_argument("run_b", metavar="RUN_B", help="the later run")
    df.add_argument("--out", default="outputs", help="where run ids are looked up (default: outputs)")
    df.add_argument("--json", action="store_true", help="print JSON instead of text")
    df.add_argument("--unchanged", action="store_true", help="also list the unchanged findings")
    df.add_argument("--fail-on-regression", action="store_true",
                    help="exit 1 when RUN_B has new failures or regressions (fail or warn) since RUN_A")
    df.set_defaults(fn=cmd_diff)

    lab = sub.add_parser("lab", help="open JupyterLab on the notebooks with the project's kernel "
                                     "(other options go to jupyter lab, e.g. --no-browser --port 8888)")
    lab.add_argument("--dir", default="asap-runbook-lab", help="installed from the wheel: the working folder for "
                     "copies of the notebooks, params and examples (default: ./asap-runbook-lab); a checkout opens at its root")
    lab.set_defaults(fn=cmd_lab)

    f = sub.add_parser("finish", help="write the run folder (results, pages, signed manifest) from what a walk in "
                                      "JupyterLab recorded in RUN_DIR, as `run` would")
    f.add_argument("run_dir", metavar="RUN_DIR", help="the run folder the walk wrote (it holds sections/*.json)")
    f.add_argument("--params", required=True, help="the YAML parameters file the walk used")
    f.add_argument("--sign-off-by", metavar="NAME", help="sign the run off as NAME if it is ready")
    f.add_argument("--signing-key", metavar="PATH", help="Ed25519 key that signs manifest.json (default: $ASAP_RUNBOOK_SIGNING_KEY)")
    f.add_argument("--fail-on", choices=[x.value for x in FailOn], default=FailOn.INCOMPLETE.value,
                   help="what makes the exit code non-zero, as for run")
    f.set_defaults(fn=cmd_finish)
    return p


def main(argv: list[str] | None = None) -> int:
    # jsonschema (under nbformat: papermill, nbconvert) imports rfc3987_syntax when it is installed
    # (jupyter-events' jsonschema extra pulls it in), which builds Lark grammars at import: ~2.4 s of
    # CPU per command, for the "iri" formats no notebook schema uses. None here makes that optional
    # import fail, as if it were not installed.
    sys.modules.setdefault("rfc3987_syntax", None)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "lab":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.lab_args = extra
    except SystemExit as e:  # argparse prints its own sentence
        return ExitCode.BAD_USAGE if e.code else 0
    try:
        return args.fn(args)
    except RunbookError as e:
        _err(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted.")
        return 130
    except BrokenPipeError:  # `asap-runbook validate P | head`: the reader left, which is not an error
        # Python would still report the pipe at exit when it flushes stdout: point stdout at nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
