"""One run folder, one job: the lease `<run_dir>/LEASE`.

A job takes the lease before it reads or writes anything else in the run folder; the file names
its holder (host, PID, SLURM job id and restart count, start time) and when it was last renewed.
A second job on the same folder is refused (LeaseRefused: one line naming the holder, exit 2),
unless the holder is gone:

- its PID is not running on this host (or runs another program: the process start time differs);
- its SLURM job has ended (`squeue`, else `sacct`, when they are on PATH);
- it is this job's own earlier incarnation (the same SLURM job id: a requeue);
- its lease expired: not renewed for `expiry_s` seconds, the case of a holder on another host
  of a shared file system that SLURM cannot vouch for.

Then the lease is taken over and the reason logged. The holder renews it every `renew_s`
seconds from a thread; if it finds the lease taken by another job (it was judged expired) it
records that, and the trainer stops (`lost`). Taking the lease is atomic on POSIX and NFS
file systems: a new lease is hard-linked into place (`os.link` fails if one exists), and of
two jobs taking over the same stale lease only the one that creates `.LEASE.break.<token>`
first replaces it.

    lease = RunFolderLease.acquire(run_dir, renew_s=60, expiry_s=600)   # LeaseRefused
    ...
    lease.lost          # None, or the holder that took the folder
    lease.release()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_ego.config import ConfigError
from megatron_ego.training.guards import TrainingStopped

log = logging.getLogger(__name__)

LEASE_FILE = "LEASE"
UNREADABLE = "unreadable"
BREAK_TIMEOUT_S = 60.0
"""A `.LEASE.break.*` file older than this was left by a job that died while taking over."""
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
          "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED"}
"""SLURM job states after which the job runs no process (squeue/sacct %T / State)."""


class LeaseRefused(ConfigError):
    """Another job holds the run folder (exit 2 at start-up)."""


class LeaseLost(TrainingStopped):
    """Another job took the run folder over while this one ran (it was judged gone): stop."""


@dataclass
class Holder:
    """Who holds a lease (the json of the LEASE file)."""

    host: str
    pid: int
    pid_start: str
    """The process's start time (/proc/PID/stat field 22), to tell a reused PID apart."""
    slurm_job_id: str
    slurm_restart_count: str
    started: float
    renewed: float
    token: str
    expiry_s: float

    @classmethod
    def me(cls, expiry_s: float) -> Holder:
        now = time.time()
        return cls(host=socket.gethostname(), pid=os.getpid(), pid_start=_start_time(os.getpid()),
                   slurm_job_id=os.environ.get("SLURM_JOB_ID", ""),
                   slurm_restart_count=os.environ.get("SLURM_RESTART_COUNT", ""),
                   started=now, renewed=now, token=uuid.uuid4().hex, expiry_s=expiry_s)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        job = f"SLURM job {self.slurm_job_id}" if self.slurm_job_id else "a job"
        if self.slurm_job_id and self.slurm_restart_count not in ("", "0"):
            job += f" (restart {self.slurm_restart_count})"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"{job} on host {self.host}, PID {self.pid}, since {since}, lease renewed "
                f"{max(0.0, now - self.renewed):.0f} s ago")


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22: start time in clock ticks


def _pid_running(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _start_time(pid)
    return not (start and now and now != start)  # same PID, another process: the holder died


def slurm_job_state(job_id: str) -> str | None:
    """The job's state ("RUNNING", "COMPLETED", ...; "GONE" when squeue no longer lists it and
    sacct is not there to say more), or None when neither squeue nor sacct can tell."""
    unlisted = False
    if shutil.which("squeue"):
        out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if out is not None and out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
        # finished jobs leave squeue after MinJobAge: "Invalid job id specified", or nothing
        unlisted = out is not None and ("Invalid job id" in out.stderr or out.returncode == 0)
    if shutil.which("sacct"):
        out = _slurm(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])
        if out is not None and out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0].rstrip("+")  # "CANCELLED by 0" -> "CANCELLED"
    return "GONE" if unlisted else None


def _slurm(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def gone_reason(holder: Holder, me: Holder, now: float) -> str | None:
    """Why `holder` no longer holds the folder, or None while it may still be running."""
    if holder.token == UNREADABLE:
        return ("the lease file is damaged (unreadable)" if now - holder.renewed > holder.expiry_s
                else None)
    if holder.slurm_job_id and holder.slurm_job_id == me.slurm_job_id:
        return (f"it is this job's own earlier incarnation (SLURM job {me.slurm_job_id} "
                f"requeued: restart {holder.slurm_restart_count or 0} -> "
                f"{me.slurm_restart_count or 0})")
    if holder.host == me.host:
        if holder.pid == me.pid and holder.pid_start == me.pid_start:
            return "it is this process"
        if not _pid_running(holder.pid, holder.pid_start):
            return f"PID {holder.pid} is not running on host {holder.host}"
        return None  # alive here: never expired while its process runs
    if holder.slurm_job_id:
        state = slurm_job_state(holder.slurm_job_id)
        if state in _ENDED or state == "GONE":
            return f"SLURM job {holder.slurm_job_id} has ended ({state.lower()})"
        if state is not None:
            return None  # SLURM says it is pending or running
    if now - holder.renewed > holder.expiry_s:
        return (f"its lease expired: not renewed for {now - holder.renewed:.0f} s "
                f"(> {holder.expiry_s:.0f} s) on a host this one cannot check")
    return None


def _read(path: Path) -> Holder | None:
    """The holder in `path`; None if there is no lease; a placeholder if it is unreadable."""
    try:
        data = json.loads(path.read_text())
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # damaged, or being written by the exclusive-create fallback: gone after 10 s
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return Holder(host="?", pid=-1, pid_start="", slurm_job_id="", slurm_restart_count="",
                      started=mtime, renewed=mtime, token=UNREADABLE, expiry_s=10.0)


def _write_tmp(folder: Path, holder: Holder) -> Path:
    tmp = folder / f".{LEASE_FILE}.{holder.token}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(holder)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return tmp


class RunFolderLease:
    """A lease held by this process (see the module docstring)."""

    def __init__(self, run_dir: Path, holder: Holder, renew_s: float):
        self.run_dir, self.path, self.holder = run_dir, run_dir / LEASE_FILE, holder
        self.renew_s = renew_s
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ taking it
    @classmethod
    def acquire(cls, run_dir: str | Path, renew_s: float = 60.0, expiry_s: float = 600.0,
                attempts: int = 20) -> RunFolderLease:
        """Take the lease of `run_dir` (created if needed) and start renewing it.

        Raises:
            LeaseRefused: a live job holds it (the message names it and what to do).
            ConfigError: the run folder cannot be created (e.g. under a file).
        """
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder {run_dir} ({err.strerror or err}): "
                              "set run.output_dir to a writable folder") from err
        me = Holder.me(expiry_s)
        path = run_dir / LEASE_FILE
        for _ in range(attempts):
            if cls._link(run_dir, path, me):
                return cls(run_dir, me, renew_s)._start()
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile
            reason = gone_reason(holder, me, time.time())
            if reason is None and holder.token == UNREADABLE:
                raise LeaseRefused(
                    f"run folder {run_dir}: its lease {path} is unreadable (being written by "
                    "another job, or damaged): try again in 10 s; a damaged one is then taken "
                    "over")
            if reason is None:
                raise LeaseRefused(
                    f"run folder {run_dir} is in use by {holder.describe()} ({path}): wait for "
                    "that job to end, or choose another run.name; a holder that is gone is "
                    "taken over automatically")
            if cls._break(run_dir, path, holder, me):
                log.warning("took over the run folder %s from %s: %s", run_dir,
                            holder.describe(), reason)
                return cls(run_dir, me, renew_s)._start()
            time.sleep(0.2)  # another job is taking it over: look again
        raise LeaseRefused(f"could not take the lease {path} after {attempts} tries (jobs "
                           "keep taking it over): run one job per run folder")

    @staticmethod
    def _link(run_dir: Path, path: Path, me: Holder) -> bool:
        """Put a new lease in place if none exists (atomic: a hard link fails if it does)."""
        tmp = _write_tmp(run_dir, me)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(tmp.read_text())
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _break(run_dir: Path, path: Path, stale: Holder, me: Holder) -> bool:
        """Replace the lease `stale` with ours; only one job wins the right to break it."""
        marker = run_dir / f".{LEASE_FILE}.break.{stale.token}"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime > BREAK_TIMEOUT_S:
                    marker.unlink(missing_ok=True)  # its breaker died half-way
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            current = _read(path)
            if current is not None and current.token != stale.token:
                return False  # someone else replaced it first
            tmp = _write_tmp(run_dir, me)
            os.replace(tmp, path)
            return True
        finally:
            marker.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------- keeping it
    def _start(self) -> RunFolderLease:
        self._thread = threading.Thread(target=self._renew_loop, name="run-folder-lease",
                                        daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except OSError as err:  # e.g. a full disk: try again next time
                log.warning("could not renew the run-folder lease %s: %s", self.path, err)
            if self.lost is not None:
                return

    def renew(self) -> None:
        """Write a fresh `renewed` time, unless another job has taken the lease (`lost`)."""
        current = _read(self.path)
        if current is None or current.token != self.holder.token:
            self.lost = current or self.holder
            log.error("the run-folder lease %s was taken by %s", self.path,
                      current.describe() if current else "nobody (it was deleted)")
            return
        self.holder.renewed = time.time()
        os.replace(_write_tmp(self.run_dir, self.holder), self.path)

    def lost_message(self) -> str:
        who = self.lost.describe() if self.lost and self.lost is not self.holder else "nobody"
        return (f"lost the run folder {self.run_dir}: its lease {self.path} was taken over by "
                f"{who} (this job was judged gone: it did not renew the lease for "
                f"{self.holder.expiry_s:.0f} s); stopping without writing, so the two jobs do "
                "not mix")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        current = _read(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)


def take_lease(run_dir: str | Path, renew_s: float, expiry_s: float, is_main: bool
               ) -> RunFolderLease | None:
    """Rank 0 takes the lease of `run_dir` and tells every rank (a collective); returns it on
    rank 0, None elsewhere.

    Raises:
        LeaseRefused / ConfigError: on every rank, when rank 0 could not take it.
    """
    import torch.distributed as dist

    from megatron_ego.runtime.processes import multi_rank

    lease, decision = None, [None]
    if is_main:
        try:
            lease = RunFolderLease.acquire(run_dir, renew_s, expiry_s)
        except ConfigError as err:
            decision[0] = (type(err) is LeaseRefused, str(err))
    if multi_rank():
        dist.broadcast_object_list(decision, src=0)
    if decision[0] is not None:
        refused, message = decision[0]
        raise (LeaseRefused if refused else ConfigError)(message)
    return lease
