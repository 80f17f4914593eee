"""The agent: runs each job at its times until SIGTERM; SIGHUP reloads the job file.

- Each job runs at the times of its cron schedule, one recovery point per VM per run.
- A run missed while the agent was down (a slot after the newest one in the history) runs
  once at start, however many slots were missed.
- A job still running when its next slot comes is not started again; the slot is logged as
  skipped.
- gc runs on its own schedule; it waits for the agent's running backups and blocks new ones
  meanwhile (``SharedRepository.run_exclusive``), so neither fails the other.
- SIGTERM (or SIGINT) cancels every running backup (they stop at their next block, remove their
  snapshots, commit nothing), waits for them to clean up, and exits 0. A second one exits at once.
- SIGHUP re-reads the job file; an invalid one is refused with a log line and the jobs go on
  as they were.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from vmkeep.repository.exceptions import RepositoryError

from ..config.load import LoadedConfig, load_config
from ..config.schedule import Schedule
from ..engine import cancel
from ..engine.exceptions import Interrupted
from ..engine.jobs import VmResult
from ..engine.limits import SnapshotLimits
from ..exceptions import AgentError
from ..history import History, Trigger
from .control import SOCKET_NAME, ControlServer
from .logs import event
from .resources import AgentResources, RepositoryPool
from .run import RunOutcome, run_job
from .systemd import notify

TICK = 1.0  # the loop wakes at least this often (signals, reloads)


def now() -> datetime:
    return datetime.now().astimezone()


class Agent:
    def __init__(self, cfg: LoadedConfig, state_dir_override: Path | None = None, listen: str | None = None) -> None:
        self.cfg = cfg
        self.listen = listen or cfg.config.agent.listen
        self._state_dir_override = state_dir_override
        self.state_dir = cfg.state_dir
        self.history = History(self.state_dir)
        self.pool = RepositoryPool()
        agent = cfg.config.agent
        self.limits = SnapshotLimits(agent.snapshots_per_host, agent.snapshots_per_datastore)
        self.token = cancel.root().child("agent")
        self._guard = threading.Lock()
        self._wake = threading.Event()
        # Set by the signal handlers, which take no lock: a handler runs on the main thread between
        # two bytecodes, possibly while that thread holds the very lock (an Event's) it would take.
        self._reload_requested = False
        self._stop_requested: str | None = None
        self._stopping = False
        self._running: dict[str, threading.Thread] = {}  # job -> its run's thread
        self._running_vms: dict[str, set[str]] = {}
        self._next: dict[str, datetime] = {}
        self._gc_next: datetime | None = None
        self._gc_thread: threading.Thread | None = None
        self.on_result: list[Callable[[VmResult], None]] = []
        self.on_run: list[Callable[[RunOutcome], None]] = []
        self.control: ControlServer | None = None
        self.monitoring: Any = None  # metrics.MonitoringServer when listening
        self.metrics: Any = None  # metrics.AgentMetrics when listening

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_stop_signal),
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_stop_signal),
            signal.SIGHUP: signal.signal(signal.SIGHUP, self._on_hup),
        }
        try:
            closed = self.history.close_unfinished()
            if closed:
                event(logging.WARNING, "runs-closed", f"{closed} run(s) of a previous agent ended unfinished")
            self.control = ControlServer(self.state_dir / SOCKET_NAME, self.handle_request)
            self.control.start()
            if self.listen:
                self._start_monitoring(self.listen)
            self._schedule_all(at_start=True)
            event(
                logging.INFO,
                "agent-started",
                config=str(self.cfg.path),
                jobs=len(self.cfg.config.jobs),
                state=str(self.state_dir),
            )
            notify(f"READY=1\nSTATUS=running {len(self.cfg.config.jobs)} job(s)")
            while not self._stopping:
                if self._stop_requested is not None:
                    self.stop(self._stop_requested)
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self._tick(now())
                self._wake.wait(self._sleep_time(now()))  # at most a tick: signals are seen within one
                self._wake.clear()
            return 0
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_monitoring(self, address: str) -> None:
        from ..metrics import AgentMetrics, MonitoringServer

        metrics = self.metrics = AgentMetrics()
        metrics.seed(self.history.last_vm_results())
        self.on_result.append(lambda result: metrics.vm_done(result, time.time()))
        self.on_run.append(lambda outcome: metrics.run_done(outcome.job, outcome.status))
        self.on_run.append(lambda outcome: self._measure(outcome.job))
        for name in self.cfg.config.repositories:
            self._measure_repository(name)
        self.monitoring = MonitoringServer(address, metrics, self.status)
        self.monitoring.start()
        event(logging.INFO, "listening", "serving /metrics and /status", address=self.monitoring.address)

    def _measure(self, job: str) -> None:
        config = self.cfg.config
        if job in config.jobs:
            self._measure_repository(config.jobs[job].repository)

    def _measure_repository(self, name: str) -> None:
        repo = self.cfg.config.repositories.get(name)
        if self.metrics is not None and repo is not None and repo.location.is_dir():
            self.metrics.measure_repository(name, repo.location)

    def _sleep_time(self, moment: datetime) -> float:
        times = list(self._next.values()) + ([self._gc_next] if self._gc_next else [])
        if not times:
            return TICK
        return max(0.0, min([TICK, *((t - moment).total_seconds() for t in times)]))

    def _tick(self, moment: datetime) -> None:
        for name, due in list(self._next.items()):
            if due <= moment:
                schedule = Schedule(self.cfg.config.jobs[name].schedule)
                self._next[name] = schedule.next_after(moment)
                self.start_run(name, Trigger.SCHEDULE, due)
        if self.metrics is not None:
            self.metrics.declare_jobs(list(self._next))
            for name, due in self._next.items():
                self.metrics.next_run.labels(name).set(due.timestamp())
        if self._gc_next is not None and self._gc_next <= moment:
            gc = self.cfg.config.agent.gc_schedule
            self._gc_next = Schedule(gc).next_after(moment) if gc else None
            self._start_gc()

    def _schedule_all(self, at_start: bool = False) -> None:
        moment = now()
        old = dict(self._next)
        self._next = {}
        for name, job in self.cfg.config.jobs.items():
            schedule = Schedule(job.schedule)
            if at_start:
                missed = self._missed_slot(name, schedule, moment)
                if missed is not None:
                    self.start_run(name, Trigger.MISSED, missed)
            self._next[name] = old.get(name) or schedule.next_after(moment)
        gc = self.cfg.config.agent.gc_schedule
        self._gc_next = Schedule(gc).next_after(moment) if gc else None

    def _missed_slot(self, name: str, schedule: Schedule, moment: datetime) -> datetime | None:
        """The newest slot that passed since this job's newest run, if the agent missed one."""
        last = self.history.last_scheduled(name)
        if last is None:
            return None  # a job the agent never ran: its first run is at its first slot
        slot = schedule.previous_before(moment)
        return slot if slot > last else None

    # -- runs -------------------------------------------------------------------------------

    def start_run(
        self, name: str, trigger: Trigger, scheduled: datetime | None, only_vms: list[str] | None = None
    ) -> int | None:
        """Start a run of job ``name`` in its own thread; None if it is still running from before."""
        with self._guard:
            if self._stopping:
                return None
            running = self._running.get(name)
            if running is not None and running.is_alive():
                event(
                    logging.WARNING,
                    "run-skipped",
                    "the previous run of this job is still going",
                    job=name,
                    slot=scheduled.isoformat() if scheduled else None,
                )
                return None
            run_id = self.history.start_run(name, trigger, scheduled)
            cfg = self.cfg
            thread = threading.Thread(
                target=self._run, args=(cfg, name, run_id, trigger, only_vms), name=f"vmkeep-job-{name}"
            )
            self._running[name] = thread
            thread.start()
            return run_id

    def _run(self, cfg: LoadedConfig, name: str, run_id: int, trigger: Trigger, only_vms: list[str] | None) -> None:
        resources = AgentResources(cfg, self.pool, self.limits, self._vm_running)

        def on_result(result: VmResult) -> None:
            for callback in self.on_result:
                callback(result)

        token = self.token.child(f"job {name}")
        try:
            outcome = run_job(
                name,
                run_id=run_id,
                trigger=trigger,
                cfg=cfg,
                resources=resources,
                history=self.history,
                token=token,
                only_vms=only_vms,
                on_result=on_result,
            )
        except Exception as exc:  # a bug must not kill the agent; it is logged with its trace
            logging.getLogger(__name__).exception("run %d of job %s crashed", run_id, name)
            event(logging.ERROR, "run-crashed", str(exc), job=name, run=run_id)
            return
        for callback in self.on_run:
            callback(outcome)

    def _vm_running(self, job: str, vm: str, running: bool) -> None:
        with self._guard:
            vms = self._running_vms.setdefault(job, set())
            if running:
                vms.add(vm)
            else:
                vms.discard(vm)

    def _start_gc(self) -> None:
        if self._gc_thread is not None and self._gc_thread.is_alive():
            event(logging.WARNING, "gc-skipped", "the previous gc is still going")
            return
        self._gc_thread = threading.Thread(target=self._gc, args=(self.cfg,), name="vmkeep-gc")
        self._gc_thread.start()

    def _gc(self, cfg: LoadedConfig) -> None:
        from vmkeep.repository.gc import collect_garbage

        for name, repo_config in cfg.config.repositories.items():
            try:
                shared = self.pool.get(name, repo_config)
                event(logging.INFO, "gc-waiting", "waiting for running backups", repository=name)
                report = shared.run_exclusive(collect_garbage, self.token)
            except Interrupted:
                return
            except (RepositoryError, AgentError, OSError) as exc:
                event(logging.ERROR, "gc-failed", str(exc), repository=name)
                continue
            event(logging.INFO, "gc-done", repository=name, freed=report.bytes_freed)

    # -- control ----------------------------------------------------------------------------

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "run":
            name = str(request["job"])
            if name not in self.cfg.config.jobs:
                return {"ok": False, "error": f"no job named {name!r} in {self.cfg.path}"}
            vms = [str(v) for v in request.get("vms") or []] or None
            run_id = self.start_run(name, Trigger.MANUAL, None, vms)
            if run_id is None:
                why = "the agent is stopping" if self._stopping else f"job {name!r} is running already"
                return {"ok": False, "error": why}
            return {"ok": True, "run_id": run_id}
        return {"ok": False, "error": f"unknown request {op!r}"}

    def status(self) -> dict[str, Any]:
        with self._guard:
            running = sorted(n for n, t in self._running.items() if t.is_alive())
            running_vms = {job: sorted(vms) for job, vms in self._running_vms.items() if vms}
        return {
            "config": str(self.cfg.path),
            "jobs": {
                name: {
                    "next_run": self._next[name].isoformat() if name in self._next else None,
                    "running": name in running,
                }
                for name in self.cfg.config.jobs
            },
            "running": running,
            "running_vms": running_vms,
            "gc_next": self._gc_next.isoformat() if self._gc_next else None,
        }

    # -- signals and reload -----------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        reason = f"received {signal.Signals(signum).name}"
        if self._stopping or self._stop_requested is not None:
            raise Interrupted(f"{reason} again: stopping at once")
        self._stop_requested = reason  # the loop stops within a tick; a handler takes no lock

    def stop(self, reason: str) -> None:
        self._stopping = True
        notify("STOPPING=1")
        event(logging.INFO, "agent-stopping", reason)
        self.token.cancel(f"the agent is stopping ({reason})")
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # the loop reloads within a tick; a handler takes no lock

    def reload(self) -> bool:
        """Re-read the job file; keep the current one if the new one is invalid."""
        notify("RELOADING=1")
        try:
            cfg = load_config(self.cfg.path, self._state_dir_override)
        except AgentError as exc:
            event(logging.ERROR, "reload-refused", f"{exc}; keeping the previous jobs", config=str(self.cfg.path))
            notify("READY=1")
            return False
        old_jobs = self.cfg.config.jobs
        self.cfg = cfg
        for name in list(self._next):
            if name not in cfg.config.jobs or cfg.config.jobs[name].schedule != old_jobs[name].schedule:
                del self._next[name]
        self._schedule_all()
        event(logging.INFO, "reloaded", config=str(cfg.path), jobs=len(cfg.config.jobs))
        notify("READY=1")
        return True

    def _shutdown(self) -> None:
        self._stopping = True
        self.token.cancel("the agent is stopping")
        with self._guard:
            threads = [t for t in self._running.values() if t.is_alive()]
        if self._gc_thread is not None:
            threads.append(self._gc_thread)
        for thread in threads:
            thread.join()
        if self.control is not None:
            self.control.stop()
        if self.monitoring is not None:
            self.monitoring.stop()
        self.pool.close()
        self.history.close()
        event(logging.INFO, "agent-stopped")
