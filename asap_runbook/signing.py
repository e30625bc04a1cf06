"""Tamper evidence: a manifest of SHA-256 digests, chained to the previous run and signed
with Ed25519; the sign-off record; `asap-runbook verify`.

The manifest lists every file of the run directory but itself. Its signature covers the
canonical JSON of everything else in it (sorted keys, no whitespace), so a changed digest, a
changed chain link or a changed sign-off all break it. The public key travels in the manifest
so an auditor can check a bundle offline; pass `--public-key` to pin the key you trust,
otherwise verify says the key was not pinned and prints its fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._paths import checkout
from .errors import UsageError
from .results import RunResults, blockers, now

KEY_ENV = "ASAP_RUNBOOK_SIGNING_KEY"
MANIFEST = "manifest.json"
SIGN_OFF = "sign-off.json"
PACKAGES = ("asap-runbook", "asap-protocol", "papermill", "nbconvert", "nbformat", "nbclient", "ipykernel",
            "ipywidgets", "jupyterlab", "httpx", "pydantic", "prometheus-api-client", "pandas", "cryptography",
            "jinja2", "pyyaml")


# -- keys ------------------------------------------------------------------------------------

def keygen(path: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write a new private key (PEM, mode 0600) and its public key beside it (`.pub`)."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path} already exists; not overwriting a key.")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub, fingerprint(key.public_key())


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: Ed25519PublicKey) -> str:
    return "SHA256:" + hashlib.sha256(_raw(public)).hexdigest()[:32]


def load_signing_key(spec: str | None = None) -> Ed25519PrivateKey | None:
    """The key from `--signing-key PATH`, else $ASAP_RUNBOOK_SIGNING_KEY (a path or the PEM itself).
    None when neither is set (the manifest is then unsigned, and verify says so)."""
    where = "--signing-key"
    if not spec:
        spec, where = os.environ.get(KEY_ENV), f"${KEY_ENV}"
    if not spec:
        return None
    if spec.lstrip().startswith("-----BEGIN"):
        pem = spec.encode()
    else:
        try:
            pem = Path(spec).expanduser().read_bytes()
        except OSError as e:
            raise UsageError(f"{where}: the signing key {spec} cannot be read ({e.strerror}).") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{where}: not an unencrypted PEM private key (make one with `asap-runbook keygen PATH`).") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{where}: the key is not an Ed25519 key (make one with `asap-runbook keygen PATH`).")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """A public key file, or a private key file (its public half is used)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"--public-key: {path} cannot be read ({e.strerror}).") from None
    for loader in (serialization.load_pem_public_key, lambda b: serialization.load_pem_private_key(b, None).public_key()):
        try:
            key = loader(pem)
        except (ValueError, TypeError):
            continue
        if isinstance(key, Ed25519PublicKey):
            return key
    raise UsageError(f"--public-key: {path} is not an Ed25519 PEM key.")


# -- provenance and sign-off -----------------------------------------------------------------

def git_commit() -> str:
    """The runbook's commit, with '+dirty' when the checkout has uncommitted changes."""
    repo = checkout()
    if repo is None:  # an installed wheel: a git repository around site-packages is not the runbook's
        return "none (installed package; see packages.asap-runbook)"
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"git_commit": git_commit(), "packages": versions,
            "interpreter": {"executable": sys.executable, "version": sys.version.split()[0],
                            "implementation": sys.implementation.name}}


def sign_off_record(run: RunResults, by: str | None, key: Ed25519PrivateKey | None) -> dict:
    """What the summary page's sign-off block shows. Signed off only when the run is ready;
    otherwise `refused` lists what blocks it."""
    rec = {"run_id": run.run_id, "params_digest": run.params_digest, "runbook_version": run.runbook_version,
           "readiness": run.readiness, "exit_code": run.exit_code, **provenance(),
           "signing_key": fingerprint(key.public_key()) if key else None,
           "coverage": {t: c.model_dump() for t, c in run.coverage.items()},
           "sections": list(run.sections), "sections_not_run": list(run.sections_not_run),
           "signed_off": False, "by": None, "at": None, "requested_by": by, "refused": []}
    if by:
        if run.exit_code == 0:
            rec.update(signed_off=True, by=by, at=now().isoformat())
        else:
            rec["refused"] = run.blockers or blockers(run.results, run.sections_not_run) or [f"the run is {run.readiness} (exit {run.exit_code})"]
    return rec


def report_sign_off(rec: dict, key: Ed25519PrivateKey | None, say=print) -> None:
    if rec["signed_off"]:
        say(f"signed off by {rec['by']} at {rec['at']}")
    elif rec["requested_by"]:
        say(f"sign-off by {rec['requested_by']} refused: the run is {rec['readiness']}; {len(rec['refused'])} item(s) block it:")
        for line in rec["refused"][:20]:
            say(f"  - {line}")
        if len(rec["refused"]) > 20:
            say(f"  ... and {len(rec['refused']) - 20} more (all of them: sign-off.json and index.html)")
    say(f"manifest signed with key {fingerprint(key.public_key())}" if key else
        f"manifest NOT signed: pass --signing-key PATH or set ${KEY_ENV} (make a key with `asap-runbook keygen PATH`)")


def sign_off_run(run_dir: str | os.PathLike, by: str, key: Ed25519PrivateKey | None, say=print) -> int:
    """Sign off a finished run after the fact (the control for a run made without --sign-off-by).

    Refuses (exit 1) when the run is not ready or its evidence does not verify, and (exit 2)
    when it is already signed off or a later run already chains to its manifest."""
    from .runner import write_index
    run_dir = Path(run_dir)
    check = verify(run_dir, key.public_key() if key else None)  # an unsigned run stays unsigned; every digest is checked
    if not check.intact:
        say(f"sign-off refused: the evidence in {run_dir} does not verify:")
        for line in check.lines():
            say(f"  {line}")
        return 1
    old = json.loads((run_dir / MANIFEST).read_text())
    if old.get("signature") and not key:
        raise UsageError("this run's manifest is signed: pass the same --signing-key to sign it off.")
    current = read_sign_off(run_dir) or {}
    if current.get("signed_off"):
        raise UsageError(f"run {run_dir.name} is already signed off by {current['by']} at {current['at']}.")
    later = later_runs_chaining_to(run_dir)
    if later:
        raise UsageError(f"a later run ({', '.join(later)}) chains to this run's manifest, so it can no longer change; "
                         "sign off the latest run, or re-run with --sign-off-by.")
    try:
        run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{run_dir}/results.json is missing or unreadable.") from None
    rec = sign_off_record(run, by, key)
    rec.update({k: current[k] for k in ("git_commit", "packages", "interpreter") if k in current})  # as run, not as now
    if not rec["signed_off"]:
        report_sign_off(rec, key, say)
        return 1
    write_sign_off(rec, run_dir)
    pages = {s: f"{s}.html" for s in run.sections if (run_dir / f"{s}.html").exists()}
    write_index(run, run_dir, pages, rec)
    manifest = {**old, "files": artifact_digests(run_dir), "signed_off_at": rec["at"], "signed_off_by": rec["by"]}
    write_manifest_file(sign(manifest, key), run_dir)
    from .outputs_index import write_outputs_index
    write_outputs_index(run_dir.parent)  # the runs index shows who signed off
    report_sign_off(rec, key, say)
    return 0


def write_sign_off(rec: dict, run_dir: Path) -> None:
    (run_dir / SIGN_OFF).write_text(json.dumps(rec, indent=1))


def read_sign_off(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / SIGN_OFF).read_text())
    except (OSError, ValueError):
        return None


# -- manifest --------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_digests(run_dir: Path) -> dict[str, str]:
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).as_posix() != MANIFEST)
    return {p.relative_to(run_dir).as_posix(): sha256_file(p) for p in files}


def previous_link(run_dir: Path) -> dict | None:
    """The newest earlier run beside this one that has a manifest. Run ids start with their UTC
    second; within one second the manifest written last is the newest."""
    second = run_dir.name.split("-")[0]
    earlier = [d for d in run_dir.parent.iterdir()
               if d.is_dir() and d != run_dir and d.name.split("-")[0] <= second and (d / MANIFEST).is_file()]
    if not earlier:
        return None
    prev = max(earlier, key=lambda d: (d.name.split("-")[0], (d / MANIFEST).stat().st_mtime_ns))
    return {"run_id": prev.name, "manifest_sha256": sha256_file(prev / MANIFEST)}


def canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(manifest: dict, key: Ed25519PrivateKey | None) -> dict:
    if key is None:
        manifest.pop("signature", None)
        return manifest
    manifest["signature"] = {
        "algorithm": "ed25519", "covers": "canonical JSON of this manifest without 'signature' (sorted keys, no spaces)",
        "public_key": base64.b64encode(_raw(key.public_key())).decode(), "key_fingerprint": fingerprint(key.public_key()),
        "value": base64.b64encode(key.sign(canonical(manifest))).decode(),
    }
    return manifest


def build_manifest(run: RunResults, run_dir: Path, key: Ed25519PrivateKey | None, previous: dict | None,
                   extra: dict | None = None) -> dict:
    manifest = {
        "schema_version": 2, "run_id": run.run_id, "created_at": now().isoformat(),
        "runbook_version": run.runbook_version, "params_digest": run.params_digest,
        "readiness": run.readiness, "exit_code": run.exit_code,
        **(extra or {}),  # small summary fields outputs/index.html reads (outputs_index.summary_fields)
        "previous": previous, "files": artifact_digests(run_dir),
    }
    return sign(manifest, key)


def write_manifest_file(manifest: dict, run_dir: Path) -> Path:
    path = run_dir / MANIFEST
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


# -- verify ----------------------------------------------------------------------------------

@dataclass
class Verification:
    run_dir: Path
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    signature: list[str] = field(default_factory=list)   # problems with the signature
    chain: list[str] = field(default_factory=list)       # problems with the link to the previous run
    sources: list[str] = field(default_factory=list)     # problems with the source runs of a merged run
    notes: list[str] = field(default_factory=list)       # facts that are not tampering
    unsigned: bool = False                               # no signature at all: intact says nothing of who wrote it

    @property
    def intact(self) -> bool:
        return not (self.changed or self.added or self.removed or self.signature or self.chain or self.sources)

    def lines(self) -> list[str]:
        out = [f"changed: {p}" for p in self.changed] + [f"added: {p}" for p in self.added]
        out += [f"removed: {p}" for p in self.removed] + [f"signature: {s}" for s in self.signature]
        out += [f"chain: {c}" for c in self.chain] + [f"sources: {c}" for c in self.sources]
        out += [f"note: {n}" for n in self.notes]
        return out


def verify(run_dir: str | os.PathLike, public_key: Ed25519PublicKey | None = None) -> Verification:
    """Recompute every digest, the signature and the chain link. UsageError if DIR is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory.")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {MANIFEST}: not an asap-runbook run directory.")
    v = Verification(run_dir)
    try:
        manifest = json.loads(path.read_text())
        listed = manifest["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        v.changed.append(MANIFEST)
        v.signature.append(f"{MANIFEST} is not a readable manifest; nothing in this directory can be trusted")
        return v
    actual = artifact_digests(run_dir)
    v.changed = sorted(p for p in listed if p in actual and actual[p] != listed[p])
    v.added = sorted(p for p in actual if p not in listed)
    v.removed = sorted(p for p in listed if p not in actual)
    _verify_signature(manifest, public_key, v)
    _verify_chain(manifest, run_dir, v)
    if manifest.get("sources"):  # a merged run: each source run's manifest and signature, again
        from .merge import verify_sources
        problems, notes = verify_sources(manifest, run_dir)
        v.sources += problems
        v.notes += notes
    return v


def _verify_signature(manifest: dict, pinned: Ed25519PublicKey | None, v: Verification) -> None:
    sig = manifest.get("signature")
    if not sig:
        v.unsigned = True
        v.notes.append("the manifest is not signed (run with --signing-key or $ASAP_RUNBOOK_SIGNING_KEY): the digests "
                       "match, but anyone could have rewritten the run and its manifest together")
        return
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
        value = base64.b64decode(sig["value"])
    except (KeyError, TypeError, ValueError):
        v.signature.append("bad: the signature block is malformed")
        return
    key = pinned or embedded
    if pinned is not None and _raw(pinned) != _raw(embedded):
        v.signature.append(f"bad: signed by key {fingerprint(embedded)}, not by the pinned key {fingerprint(pinned)}")
        return
    try:
        key.verify(value, canonical(manifest))
    except InvalidSignature:
        v.signature.append(f"bad: the signature does not match the manifest's contents (key {fingerprint(key)})")
        return
    if pinned is None:
        v.notes.append(f"signature valid for the key embedded in the manifest, {fingerprint(key)}; "
                       "pass --public-key to check it is the key you trust")
    else:
        v.notes.append(f"signature valid, key {fingerprint(key)} (pinned)")


def _verify_chain(manifest: dict, run_dir: Path, v: Verification) -> None:
    prev = manifest.get("previous")
    if not prev:
        v.notes.append("first run in its folder: no previous manifest to chain to")
        return
    prev_manifest = run_dir.parent / prev.get("run_id", "") / MANIFEST
    if not prev_manifest.is_file():
        v.notes.append(f"previous run {prev.get('run_id')} is not beside this one; chain link not checked")
    elif sha256_file(prev_manifest) != prev.get("manifest_sha256"):
        v.chain.append(f"the previous run's manifest ({prev.get('run_id')}/{MANIFEST}) changed since this run chained to it")
    else:
        v.notes.append(f"chained to previous run {prev['run_id']} (its manifest is unchanged)")


def later_runs_chaining_to(run_dir: Path) -> list[str]:
    """Runs beside this one whose manifest links to this run's manifest."""
    out = []
    for d in run_dir.parent.iterdir():
        if d.is_dir() and d != run_dir and (d / MANIFEST).is_file():
            try:
                prev = json.loads((d / MANIFEST).read_text()).get("previous") or {}
            except ValueError:
                continue
            if prev.get("run_id") == run_dir.name:
                out.append(d.name)
    return sorted(out)

