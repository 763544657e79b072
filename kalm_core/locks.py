"""The lake's write lock: one writing connection at a time across processes, and waiters told whom they wait for.

An OS file lock (`fcntl.flock`) rather than a row in the catalogue: the kernel frees it when its process dies,
so a `kill -9` never leaves the lake locked. The holder writes who it is (run, pid, since when) into the file.
Re-entrant within a process: a step that opens a second writable connection does not wait for itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_WAIT_S = 1800.0  # how long a writer waits for another before failing ($KALM_LAKE_WAIT_S)

_held: dict[str, list] = {}  # path -> [file object, depth]
_guard = threading.Lock()


class LakeBusy(RuntimeError):
    """Another process held the lake's write lock for longer than we were willing to wait."""


def describe_holder(info: dict) -> str:
    if not info:
        return "another process"
    who = info.get("owner") or "a process"
    return f"{who} (pid {info.get('pid')}, writing since {info.get('since')})"


class WriteLock:
    def __init__(self, path: str | Path, owner: str | None = None, wait_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.owner = owner or os.environ.get("KALM_RUN_OWNER") or f"pid {os.getpid()}"
        self.wait_s = float(wait_s if wait_s is not None else os.environ.get("KALM_LAKE_WAIT_S", DEFAULT_WAIT_S))
        self.on_wait = on_wait

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        key = str(self.path.resolve())
        with _guard:
            if key in _held:
                _held[key][1] += 1
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        deadline, told = time.monotonic() + self.wait_s, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    msg = f"waiting for the lake's write lock, held by {describe_holder(self.holder())}"
                    (self.on_wait or (lambda m: None))(msg)
                    told = True
                if time.monotonic() >= deadline:
                    f.close()
                    raise LakeBusy(f"the lake is being written by {describe_holder(self.holder())}; waited "
                                   f"{self.wait_s:.0f}s (KALM_LAKE_WAIT_S). Let that run finish or stop it.") from None
                time.sleep(0.1)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"owner": self.owner, "pid": os.getpid(),
                            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        f.flush()
        with _guard:
            _held[key] = [f, 1]

    def release(self) -> None:
        key = str(self.path.resolve())
        with _guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
        f = entry[0]
        f.seek(0)
        f.truncate()
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
