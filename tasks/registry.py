"""The adapter registry: every trained LoRA adapter or fully fine-tuned model, its provenance, and
which one is champion (an "adapter" below is either: `Adapter.method` says which).

Layout under `<home>/adapters/`:
    <name>/                 a peft adapter directory (adapter_config.json, adapter_model.safetensors),
                            or for `training.method = "full"` a whole model (config.json, model.safetensors)
      metadata.json         written once at registration: base model, dataset hash and size, chunk-table
                            version, access record (who may be served it), hyper-parameters, losses,
                            wall time, tokens/s, created at, code version
      decisions.jsonl       every gate decision and promotion about this adapter, appended
    registry.json           the mutable state: champion, each adapter's status, the event history
    .work/<key>/            training work directories (checkpoints) so a crashed run resumes

Statuses: `candidate` when registered, `champion` when promoted, `retired` when a newer champion
replaces it, `rejected` when the gate says no, `rolled_back` when a promotion is undone.
All writes go through one lock and an atomic replace, so a failed run never leaves a half-written registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from contextlib import contextmanager

from data_contracts.schemas import PUBLIC_GROUP
from tasks import atomic
from tasks.store import writer_lock

REGISTRY_FILE = "registry.json"


def trained_method(directory: Path) -> str | None:
    """What a trained directory holds: "lora" (a peft adapter), "full" (a whole fine-tuned model), or None."""
    if (directory / "adapter_config.json").is_file():
        return "lora"
    if (directory / "config.json").is_file() and any(directory.glob("model*.safetensors")):
        return "full"
    return None


class AdapterNotFound(Exception):
    """A named adapter is not in the registry; the message lists what is."""


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says why."""


class StaleVerdict(RegistryError):
    """A gate verdict about a champion that is no longer the champion."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """The git commit of this checkout (with `+dirty` when modified), else the installed version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    import importlib.metadata

    try:
        return "ragtune " + importlib.metadata.version("ragtune")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Adapter:
    name: str
    path: Path
    status: str
    metadata: dict[str, Any]

    @property
    def method(self) -> str:
        """lora or full (`training.method`); adapters registered before full fine-tuning existed are lora."""
        return self.metadata.get("method", "lora")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "status": self.status, **self.metadata}

    def decisions(self) -> list[dict[str, Any]]:
        f = self.path / "decisions.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def adapter_access(adapter_dir: Path) -> dict[str, Any] | None:
    """The access record of an adapter directory (`metadata.json`), or None when it has none."""
    meta = adapter_dir / "metadata.json"
    access = json.loads(meta.read_text()).get("access") if meta.is_file() else None
    return access if isinstance(access, dict) and isinstance(access.get("readers"), list) else None


def served_to(access: dict[str, Any] | None) -> str:
    """Who an adapter with this access record may be served to, in words for the report."""
    if not isinstance(access, dict) or not isinstance(access.get("readers"), list):
        return "no one (no access record)"
    needed = [r for r in access["readers"] if PUBLIC_GROUP not in r]
    return "everyone" if not needed else "callers in " + " and ".join("/".join(r) for r in needed)


def withheld_for(adapter_dir: Path, caller_groups: Sequence[str]) -> str | None:
    """Why a caller in `caller_groups` may not be served this adapter, or None when it may.

    An adapter has seen the text of every chunk its training rows were built from, and a small model
    can repeat it: it is served only to a caller who may read each of those chunks (shares one group
    of each reader list, or the chunk was public). An adapter without an access record is served to no one.
    """
    access = adapter_access(adapter_dir)
    if access is None:
        return f"adapter {adapter_dir.name} has no access record (trained before ragtune kept one): retrain it"
    mine = set(caller_groups)
    unreadable = [r for r in access["readers"] if PUBLIC_GROUP not in r and not mine & set(r)]
    if unreadable:
        need = " and ".join("/".join(r) for r in unreadable)
        return f"adapter {adapter_dir.name} was trained on chunks readable only by {need}; the caller may not read them"
    return None


class Registry:
    def __init__(self, root: Path, locks_dir: Path):
        self.root, self.locks_dir = Path(root), Path(locks_dir)

    # --- reading ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        f = self.root / REGISTRY_FILE
        if not f.is_file():
            return {"champion": None, "status": {}, "events": []}
        try:
            state = json.loads(f.read_text())
            if not isinstance(state, dict) or not {"champion", "status", "events"} <= set(state):
                raise ValueError("it lacks champion/status/events")
            return state
        except ValueError as e:
            backup = f.with_name(REGISTRY_FILE + ".bak")
            back = (f"the version before the last change is {backup}: `cp {backup} {f}`" if backup.is_file()
                    else "restore it from a backup; the adapter directories and their decisions.jsonl are intact")
            raise RegistryError(f"the registry file {f} is corrupt ({e}); {back}") from None

    def adapters(self) -> list[Adapter]:
        """Every registered adapter, oldest first."""
        state = self._state()
        out = []
        for name in state["status"]:
            meta_file = self.root / name / "metadata.json"
            if meta_file.is_file():
                out.append(Adapter(name, self.root / name, state["status"][name], json.loads(meta_file.read_text())))
        return sorted(out, key=lambda a: (a.metadata.get("created_at", ""), a.name))

    def get(self, name: str) -> Adapter:
        for a in self.adapters():
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.adapters()) or "none yet: run `ragtune train`"
        raise AdapterNotFound(f"no adapter {name!r} in {self.root} (registered: {known})")

    def champion(self) -> Adapter | None:
        name = self._state()["champion"]
        return self.get(name) if name else None

    def latest(self) -> Adapter | None:
        adapters = self.adapters()
        return adapters[-1] if adapters else None

    def events(self) -> list[dict[str, Any]]:
        return list(self._state()["events"])

    def resolve(self, ref: str | None) -> Path | None:
        """An adapter reference as given to `--adapter`: `none`, `champion` (None when there is none),
        `latest`, a registered name, or a directory path."""
        if ref is None or ref == "none":
            return None
        if ref == "champion":
            c = self.champion()
            return c.path if c else None
        if ref == "latest":
            a = self.latest()
            if a is None:
                raise AdapterNotFound(f"no adapters in {self.root} yet: run `ragtune train`")
            return a.path
        path = Path(ref).expanduser()
        if trained_method(path):
            return path
        return self.get(ref).path

    # --- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        with writer_lock(self.locks_dir, "adapters"):
            state = self._state()
            yield state
            self.root.mkdir(parents=True, exist_ok=True)
            current = self.root / REGISTRY_FILE
            if current.is_file():  # the way back if the new version is ever damaged
                atomic.write_text(current.with_name(REGISTRY_FILE + ".bak"), current.read_text())
            atomic.write_text(current, json.dumps(state, indent=2))

    def work_dir(self, key: str) -> Path:
        """Where a training run with this key keeps its checkpoints (reused by a rerun to resume)."""
        return self.root / ".work" / key[:16]

    def register(self, adapter_dir: Path, name: str, metadata: dict[str, Any]) -> Adapter:
        """Move a finished adapter directory into the registry as a `candidate`."""
        if trained_method(adapter_dir) is None:
            raise RegistryError(f"{adapter_dir} is not a finished adapter (no adapter_config.json) nor a fine-tuned model (no config.json)")
        target = self.root / name
        if target.exists():
            raise RegistryError(f"an adapter named {name!r} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(adapter_dir, staging)
        (staging / "metadata.json").write_text(json.dumps({**metadata, "name": name}, indent=2, default=str))
        with self._edit() as state:
            staging.rename(target)  # the registry only ever names complete directories
            state["status"][name] = "candidate"
            state["events"].append({"at": now(), "action": "register", "adapter": name})
        return self.get(name)

    def record(self, name: str, decision: dict[str, Any]) -> None:
        """Append a decision (a gate verdict, a promotion) to the adapter's history."""
        path = self.get(name).path / "decisions.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"at": now(), **decision}, default=str) + "\n")

    def reject(self, name: str, reason: str, decision: dict[str, Any] | None = None) -> None:
        self.get(name)
        with self._edit() as state:
            if state["champion"] != name:
                state["status"][name] = "rejected"
            state["events"].append({"at": now(), "action": "reject", "adapter": name, "reason": reason})
        self.record(name, {"action": "reject", "reason": reason, **(decision or {})})

    def promote(self, name: str, reason: str, decision: dict[str, Any] | None = None, *, compared_with: str | None | object = ...) -> str | None:
        """Make `name` the champion; returns the previous champion's name.

        `compared_with`: the champion the verdict was measured against (None: no champion then). The
        check runs under the registry lock, so a verdict is never applied to a champion it did not see.
        """
        self.get(name)
        with self._edit() as state:
            previous = state["champion"]
            if compared_with is not ... and previous != compared_with:
                raise StaleVerdict(
                    f"not promoting {name!r}: it was compared with champion {compared_with or 'none (base)'} but the champion "
                    f"is now {previous or 'none'} (promoted meanwhile); evaluate again to compare with it"
                )
            if previous == name:
                raise RegistryError(f"{name!r} is already the champion")
            if previous:
                state["status"][previous] = "retired"
            state["champion"] = name
            state["status"][name] = "champion"
            state["events"].append({"at": now(), "action": "promote", "adapter": name, "previous": previous, "reason": reason})
        self.record(name, {"action": "promote", "previous": previous, "reason": reason, **(decision or {})})
        return previous

    def rollback(self, reason: str = "manual rollback") -> tuple[str, str | None]:
        """Undo the latest promotion still in effect: its champion becomes `rolled_back` and the champion
        before it (or none) is restored. Returns (rolled back, restored)."""
        with self._edit() as state:
            champion = state["champion"]
            if champion is None:
                raise RegistryError("there is no champion to roll back")
            promotion = next(
                (e for e in reversed(state["events"]) if e["action"] == "promote" and e["adapter"] == champion), None
            )
            restored = promotion.get("previous") if promotion else None
            state["status"][champion] = "rolled_back"
            if restored:
                state["status"][restored] = "champion"
            state["champion"] = restored
            state["events"].append({"at": now(), "action": "rollback", "adapter": champion, "restored": restored, "reason": reason})
        self.record(champion, {"action": "rollback", "restored": restored, "reason": reason})
        return champion, restored
