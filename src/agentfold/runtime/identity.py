"""Who a worker is: its default id, and the facts about its process that tell whether an earlier start still runs.

A worker id names a worker across restarts: a relaunch under the same id resumes the runs the id held at once,
where a new id waits for their lease to expire. `default_worker_id` derives a stable id where the deployment gives
one that names exactly one worker process, and falls back to a fresh ``host-pid-random`` id elsewhere.

Every heartbeat records the process behind it (`ProcessIdentity`). A worker starting under an id whose last
heartbeat is still fresh asks `process_state` about that process: on the same machine and in the same process
namespace, a process that is gone (or whose pid now belongs to another process) is dead for sure, and one that
runs is alive; anywhere else the answer is unknown, and the starting worker watches the id's heartbeats instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

WORKER_ID_VARIABLE: Final = "AGENTFOLD_WORKER_ID"

DEAD: Final = "dead"
"""The process is gone: it can neither heartbeat nor append again."""
RUNNING: Final = "running"
"""The process exists and is scheduled: it is very likely still heartbeating."""
UNKNOWN: Final = "unknown"
"""Another machine or process namespace, or a paused process: only its heartbeats can tell."""

_live_nonces: set[str] = set()
"""The incarnations whose worker runs in this process now (a process may hold several workers)."""


def host_name() -> str:
    """This machine's name, reduced to the characters a worker id keeps."""
    name = "".join(char if char.isalnum() or char in "-." else "-" for char in socket.gethostname())
    return name[:60] or "host"


def new_worker_id() -> str:
    """A worker id unique across machines and restarts: host, process id and a random suffix."""
    return f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def default_worker_id(environ: Mapping[str, str] | None = None) -> str:
    """The id `agentfold worker` takes when none is given, the first of:

    1. ``AGENTFOLD_WORKER_ID``, when set and not empty;
    2. the Kubernetes pod name (the host name of a process in a pod, which Kubernetes keeps across restarts of its
       containers), when ``KUBERNETES_SERVICE_HOST`` says the process runs in a pod;
    3. ``<host>-<unit>`` for a process that is the main part of a systemd service (``INVOCATION_ID`` set and its
       cgroup named after a ``.service`` unit), e.g. ``web-1-agentfold-worker@2``;
    4. a fresh ``host-pid-random`` id (`new_worker_id`), whose runs wait out their lease after a crash.

    A derived id names one worker only if the deployment runs one worker per pod or per service instance; a second
    worker started under the same id is refused (`WorkerIdInUse`), never run beside the first.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(WORKER_ID_VARIABLE, "").strip()
    if explicit:
        return explicit
    if env.get("KUBERNETES_SERVICE_HOST"):
        pod = env.get("HOSTNAME", "").strip() or socket.gethostname()
        if pod:
            return pod
    if env.get("INVOCATION_ID"):
        unit = _systemd_service()
        if unit is not None:
            return f"{host_name()}-{unit}"
    return new_worker_id()


def _systemd_service() -> str | None:
    """The systemd service whose own cgroup holds this process (``agentfold-worker@2``), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.endswith(".service") and len(last) > len(".service"):
            return last[: -len(".service")]
    return None


@dataclass(frozen=True)
class ProcessIdentity:
    """What identifies one process among every process that ever ran: machine boot, pid namespace, pid, start."""

    host: str
    boot: str
    """The kernel's boot id: differs between machines and between boots of one machine."""
    pidns: str
    """The pid namespace (containers have their own): pids are only comparable within one."""
    pid: int
    started: int
    """When the process started, in clock ticks since boot: a pid reused by a later process has another."""
    nonce: str
    """One incarnation of a worker in this process (a process may start several workers, one after another)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ProcessIdentity | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                str(data["host"]),
                str(data["boot"]),
                str(data["pidns"]),
                int(data["pid"]),
                int(data["started"]),
                str(data["nonce"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def this_process(nonce: str) -> ProcessIdentity:
    """The identity of this process, for the incarnation `nonce`."""
    boot, pidns = _machine()
    stat = _stat(os.getpid())
    return ProcessIdentity(host_name(), boot, pidns, os.getpid(), 0 if stat is None else stat[1], nonce)


@cache
def _machine() -> tuple[str, str]:
    """(boot id, pid namespace) of this process; empty strings where the system does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return boot, pidns


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of process `pid`, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        raise
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_state(identity: ProcessIdentity | None) -> str:
    """`dead`, `running` or `unknown`: what this machine can tell about the process `identity` names."""
    if identity is None or not identity.boot or not identity.pidns:
        return UNKNOWN
    boot, pidns = _machine()
    if (identity.boot, identity.pidns) != (boot, pidns):
        return UNKNOWN
    if identity.pid == os.getpid():
        mine = _stat(identity.pid)
        if mine is not None and mine[1] == identity.started:
            return RUNNING if identity.nonce in _live_nonces else DEAD
        return DEAD
    try:
        stat = _stat(identity.pid)
    except OSError:
        return UNKNOWN
    if stat is None or stat[1] != identity.started or stat[0] in ("Z", "X", "x"):
        return DEAD
    if stat[0] in ("T", "t"):
        return UNKNOWN  # stopped (SIGSTOP, a debugger): it may resume, and only its heartbeats can tell
    return RUNNING


def running_here(nonce: str, running: bool) -> None:
    """Note that the incarnation `nonce` of a worker runs (or no longer runs) in this process."""
    if running:
        _live_nonces.add(nonce)
    else:
        _live_nonces.discard(nonce)
