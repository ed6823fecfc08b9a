"""The installer's stamp: which steps finished for which inputs, so a second run in the session does nothing.

Standard library only. The key hashes everything a result depends on (the spec and lock bytes, the target
interpreter, the options); a stamp for another key counts for nothing. A finished step is still re-checked
against the machine before it is skipped (kaggle_setup.py does that): the stamp saves time, it is not trusted.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from rsna_phase0.atomic import write_json_atomic

STATE_SCHEMA = 1


def setup_key(*, spec_path: Path, lock_path: Path, python: str, options: dict) -> str:
    digest = hashlib.sha256()
    for path in (spec_path, lock_path):
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps({"python": python, **options}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class State:
    """Finished steps for one key, saved atomically after each step (a run cut short keeps what it did)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        self.steps: dict[str, dict] = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return  # no stamp yet, or a broken one: start clean
        if raw.get("schema") == STATE_SCHEMA and raw.get("key") == key:
            self.steps = dict(raw.get("steps", {}))

    def done(self, step: str) -> bool:
        return step in self.steps

    def mark(self, step: str, **facts) -> None:
        self.steps[step] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **facts}
        self._save()

    def forget(self, step: str) -> None:
        if self.steps.pop(step, None) is not None:
            self._save()

    def _save(self) -> None:
        payload = {"schema": STATE_SCHEMA, "key": self.key, "steps": self.steps}
        write_json_atomic(self.path, payload, sort_keys=True)
