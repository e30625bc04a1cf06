"""Progress of a headless run in the terminal: which section, which check, how far.

The section kernels write `sections/<section>.progress.json` as checks start and finish
(engine._Recorder); this polls those small files from a thread. On a terminal it draws one
tqdm bar; elsewhere (CI logs) it prints a plain line every few seconds instead of a bar.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

POLL_SECONDS = 0.3
PLAIN_EVERY_SECONDS = 10.0


def read_progress(sections_dir: Path, sections: list[str]) -> dict[str, dict]:
    out = {}
    for s in sections:
        try:
            out[s] = json.loads((sections_dir / f"{s}.progress.json").read_text())
        except (OSError, ValueError):
            out[s] = {}
    return out


def describe(state: dict[str, dict], totals: dict[str, int]) -> tuple[int, str]:
    """(checks done, 'security 12/25 · monitoring 3/16 · running SEC-TLS-2 on hardened')."""
    done, parts, running = 0, [], []
    for s, total in totals.items():
        st = state.get(s) or {}
        n = int(st.get("done", 0))
        done += n
        parts.append(f"{s} {n}/{total}" + (" ✓" if st.get("finished") else ""))
        running += st.get("running") or []
    text = " · ".join(parts)
    if running:
        text += f" · running {running[0]}" + (f" (+{len(running) - 1})" if len(running) > 1 else "")
    return done, text


@contextlib.contextmanager
def watch_sections(sections_dir: Path, totals: dict[str, int], say: Callable[[str], None] = print,
                   stream=None, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """Show progress until the block ends; yields a `tell(line)` that prints without breaking the bar."""
    stream = stream or sys.stderr
    if enabled is False:
        yield say
        return
    tty = enabled if enabled is not None else stream.isatty()
    total = sum(totals.values())
    stop = threading.Event()
    lock = threading.Lock()
    bar = None
    if tty:
        from tqdm import tqdm
        cols = shutil.get_terminal_size((100, 20)).columns or 100  # a pty without a size reports 0
        bar = tqdm(total=total, unit="check", file=stream, ncols=cols, leave=False,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def poll() -> None:
        last_plain = time.monotonic()
        while True:
            done, text = describe(read_progress(sections_dir, list(totals)), totals)
            with lock:
                if bar is not None:
                    bar.n = min(done, total)
                    bar.set_postfix_str(text, refresh=False)
                    bar.refresh()
                elif time.monotonic() - last_plain >= PLAIN_EVERY_SECONDS:
                    last_plain = time.monotonic()
                    print(f"  progress: {done}/{total} checks · {text}", file=stream, flush=True)
            if stop.wait(POLL_SECONDS):
                return

    def tell(line: str) -> None:
        with lock:
            if bar is not None:
                bar.clear()
                say(line)
                bar.refresh()
            else:
                say(line)

    thread = threading.Thread(target=poll, name="asap-runbook-progress", daemon=True)
    thread.start()
    try:
        yield tell
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.close()
