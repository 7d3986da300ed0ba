"""The parent's main loop: fork N children, reap, replace, kill the hung, roll, recycle, notify systemd."""

import time
from typing import Callable, Iterable

from supervisor import tuning
from supervisor.children import Children
from supervisor.notify import Notifier
from supervisor.observer import Observer, Observers
from supervisor.processes import Processes
from supervisor.restarts import RestartLimit
from supervisor.signals import NAMES, SignalQueue
from supervisor.states import UP, Child, Parent, ParentState, State
from worker import exitcodes, lifecycle, logs
from worker.logs import EventLog
from worker.settings import Settings, SettingsError

log = EventLog(__name__)

TICK = 0.2          # longest wait between two turns of the loop when no signal arrives
STOP_MARGIN = 5.0   # beyond GRACEFUL_TIMEOUT: time for a drained child to close its connections and exit
LOOP_FAILURES, LOOP_WINDOW = 5, 60.0   # more failing turns than this within the window: give up


class Arbiter:
    """Keeps `wanted` children consuming; signals, heartbeats and exits of children decide what happens next.

    Seams for tests: `processes` (fork, signals, waitpid, heartbeat files), `clock`, `signals`;
    `tick()` is one turn of the loop and `dispatch(signum)` acts on one signal.
    """

    def __init__(self, settings: Settings, load_settings: Callable[[], Settings], notifier: Notifier,
                 processes: Processes, observers: Iterable[Observer] = (),
                 clock: Callable[[], float] = time.monotonic, signals: SignalQueue | None = None):
        self.settings = settings
        self.load_settings = load_settings
        self.notifier = notifier
        self.processes = processes
        self.observers = Observers(observers)
        self.clock = clock
        self.signals = signals or SignalQueue()
        self.children = Children(processes, clock)
        self.parent = Parent()
        self.wanted = settings.worker_processes
        self.generation = 1                   # bumped by HUP; children of older generations are replaced
        self.restarts = RestartLimit(settings.restart_limit, settings.restart_window)
        self.loop_failures = RestartLimit(LOOP_FAILURES, LOOP_WINDOW)
        self.broken = False                   # the loop kept failing even while stopping
        self.started_at = clock()

    def run(self) -> int:
        """Loop until every child is gone after a stop. A failing turn is logged and counted, never fatal to
        the children; if the loop keeps failing, the parent gives up gracefully (TERM, drain, exit 1)."""
        self.signals.install()
        log.info("arbiter_started", processes=self.wanted, threads=self.settings.worker_threads,
                 prefetch=self.settings.prefetch, timeout=self.settings.worker_timeout,
                 heartbeats=self.processes.path)
        try:
            while not self.broken:
                self.guarded(self.tick)
                if self.finished():
                    break
                for signum in self.signals.wait(TICK):
                    self.guarded(self.dispatch, signum)
        finally:
            self.children.close(self.settings.graceful_timeout + STOP_MARGIN)  # normally nothing is left
        code = exitcodes.FAILURE if self.broken else self.parent.stop_code
        log.info("arbiter_stopped", code=code, reason=exitcodes.describe(code))
        return code

    def tick(self) -> None:
        """One turn: reap, read heartbeats, kill the hung, fill the slots, roll, tell systemd and observers."""
        self.reap_children()
        self.read_heartbeats()
        self.kill_hung()
        self.manage_children()
        self.replace_retiring()
        self.notify_systemd()
        census = self.children.census()
        self.observers.tick(alive=census.alive, consuming=census.consuming, blocked=census.blocked,
                            paused=census.paused, nodes=census.nodes)

    def guarded(self, step: Callable, *args) -> None:
        """Run a turn (or a signal's handler); an exception is a bug of ours: log it, count it, go on.
        More than LOOP_FAILURES within LOOP_WINDOW: give up gracefully; still failing then: break the loop."""
        try:
            step(*args)
        except Exception:
            failing = not self.loop_failures.allow(self.clock())
            log.error("arbiter_loop_failed", exc_info=True, failures=len(self.loop_failures.times))
            if not failing:
                return
            try:
                if self.parent.state is not ParentState.STOPPING:
                    return self.give_up(exitcodes.FAILURE, "the parent's loop keeps failing")
            except Exception:
                log.error("arbiter_loop_failed", exc_info=True)
            self.broken = True  # failing while stopping: run() drains what is left and exits 1

    def finished(self) -> bool:
        return self.parent.state is ParentState.STOPPING and not self.children.alive()

    # ---- signals: queued by the handlers, acted on here ---------------------------------------

    def dispatch(self, signum: int) -> None:
        name = NAMES[signum]
        if name != "chld":
            log.info("signal", signal=name)
        getattr(self, f"handle_{name}")()

    def handle_chld(self) -> None:
        self.reap_children()

    def handle_term(self) -> None:
        self.begin_stop(exitcodes.OK)

    handle_int = handle_term

    def handle_quit(self) -> None:
        self.begin_stop(exitcodes.OK)
        for child in self.children.alive():
            self.children.kill(child, lifecycle.QUIT)

    def handle_hup(self) -> None:
        """Reload the settings; if anything about them is wrong, keep the old settings and children."""
        if self.parent.state is ParentState.STOPPING:
            return
        try:
            settings = self.load_settings()
            logs.configure(settings.log_level, worker=settings.name, role="arbiter")
            tuning.check_consumer_timeout(settings)
        except Exception as exc:
            error = str(exc) if isinstance(exc, SettingsError) else f"{type(exc).__name__}: {exc}"[:300]
            log.error("reload_failed", error=error, hint="still running with the previous settings")
            return
        if self.parent.state is not ParentState.STARTING:  # before READY=1 there is nothing to announce
            self.notifier.reloading()
            self.parent.change(ParentState.RELOADING)
        self.settings, self.wanted = settings, settings.worker_processes
        self.generation += 1
        self.restarts = RestartLimit(settings.restart_limit, settings.restart_window)
        log.info("reloading", generation=self.generation, processes=self.wanted)
        self.observers.reload(settings)

    def handle_ttin(self) -> None:
        self.wanted += 1
        log.info("scale", processes=self.wanted)

    def handle_ttou(self) -> None:
        self.wanted = max(1, self.wanted - 1)
        log.info("scale", processes=self.wanted)

    # ---- one turn of the loop -----------------------------------------------------------------

    def reap_children(self) -> None:
        for child, code in self.children.reap():
            self.child_exited(child, code)

    def read_heartbeats(self) -> None:
        for _ in self.children.read_heartbeats():
            self.restarts.succeeded()  # a start that succeeded ends a streak of failed ones

    def kill_hung(self) -> None:
        now = self.clock()
        start_timeout = 2 * self.settings.connect_timeout + self.settings.worker_timeout
        for child in self.children.alive():
            if child.state is State.STARTING and now - child.started_at > start_timeout:
                self.children.kill(child, lifecycle.START_TIMEOUT)
            elif child.state in (*UP, State.RETIRING) and now - child.beat.at > self.settings.worker_timeout:
                self.children.kill(child, lifecycle.HUNG)
            elif child.state is State.STOPPING and now > child.deadline:
                self.children.kill(child, lifecycle.STOP_TIMEOUT)

    def manage_children(self) -> None:
        """Move the slots toward the wanted count: fill empty ones, retry those whose backoff ended, drop the extra."""
        if self.parent.state is ParentState.STOPPING:
            return
        now = self.clock()
        for index in range(1, self.wanted + 1):
            child = self.children.current(index)
            if child is None:
                self.spawn(index)
            elif child.state is State.BACKOFF and now >= child.deadline:
                self.children.end(child)
                self.spawn(index, failures=child.failures)
        for index in [i for i in self.children.indexes() if i > self.wanted]:
            child = self.children.current(index)
            if child.state is State.BACKOFF:
                self.children.end(child)
            else:
                self.stop_child(child, lifecycle.SCALE_DOWN)

    def replace_retiring(self) -> None:
        """Rolling replacement (HUP, recycle, blocked too long), one slot at a time: a successor starts in
        the slot, and its predecessor stops only once the successor consumes (capacity never drops)."""
        if self.parent.state is ParentState.STOPPING:
            return
        for old in self.children.leaving():
            successor = self.children.current(old.index)
            if old.state is State.RETIRING and (successor is None or successor.state in UP):
                self.stop_child(old, old.reason)
        if any(c.state in (State.STARTING, State.BACKOFF) for c in self.children.slotted()):
            return  # a successor is still coming up (or a slot is in backoff): one at a time
        for old in self.children.slotted():
            reason = self.due_for_replacement(old)
            if reason:
                self.children.retire(old, reason)
                new = self.spawn(old.index)
                log.info("child_replacing", **old.describe(), reason=reason, successor_pid=new.pid)
                return

    def notify_systemd(self) -> None:
        """READY=1 and STATUS= say how much capacity there is; WATCHDOG=1 only that this loop turns."""
        slots = self.children.slotted()
        all_up = len(slots) == self.wanted and all(c.state in UP for c in slots)
        status = self.children.census().status(self.wanted, stopping=self.parent.state is ParentState.STOPPING)
        reloaded = self.parent.state is ParentState.RELOADING and all(c.generation == self.generation for c in slots)
        if all_up and (self.parent.state is ParentState.STARTING or reloaded):
            self.parent.change(ParentState.RUNNING)
            self.notifier.ready(status)
            log.info("reloaded" if reloaded else "ready", processes=self.wanted, generation=self.generation,
                     seconds=round(self.clock() - self.started_at, 3))
        else:
            self.notifier.update_status(status)
        self.notifier.watchdog(self.clock())

    # ---- decisions ----------------------------------------------------------------------------

    def spawn(self, index: int, failures: int = 0) -> Child:
        child = self.children.spawn(index, self.generation, self.settings, failures)
        if child.state is State.STARTING:  # else fork() failed and the slot backs off
            self.observers.child_started(index, child.pid)
        return child

    def stop_child(self, child: Child, reason: str) -> None:
        self.children.stop(child, reason, self.settings.graceful_timeout + STOP_MARGIN)

    def child_exited(self, child: Child, code: int) -> None:
        """Act on why it left: planned, config error, recycle, crash while starting, crash while running."""
        now = self.clock()
        planned = not self.children.in_slot(child)
        reason = child.reason or exitcodes.describe(code)
        level = log.info if planned or code in (exitcodes.OK, exitcodes.RECYCLE) else log.warning
        level("child_exited", **child.describe(), code=code, reason=reason, settled=child.beat.settled,
              uptime=round(now - child.started_at, 3))
        restart = reason in lifecycle.REPLACED if planned else code != exitcodes.CONFIG
        self.observers.child_exited(child.index, child.pid, reason, restart)
        if planned:
            self.children.end(child, reason)
        elif code == exitcodes.CONFIG:
            self.children.end(child, reason)
            self.give_up(exitcodes.CONFIG, "a child found the configuration wrong; restarting will not help")
        elif code == exitcodes.RECYCLE:
            self.children.end(child, reason)
            self.spawn(child.index)
        elif not self.restarts.allow(now, failed_start=not child.ready_at):
            self.children.end(child, reason)
            self.give_up(exitcodes.GAVE_UP, f"more than {self.settings.restart_limit} restarts within "
                         f"{self.settings.restart_window:g} s or failed starts in a row")
        elif not child.ready_at:
            self.children.back_off(child, reason)
        else:
            self.children.end(child, reason)
            new = self.spawn(child.index)
            log.info("child_restarted", index=child.index, old_pid=child.pid, child_pid=new.pid, reason=reason)

    def give_up(self, code: int, message: str) -> None:
        log.error("giving_up", code=code, reason=exitcodes.describe(code), message=message)
        self.begin_stop(code)

    def begin_stop(self, code: int) -> None:
        """Graceful: TERM every child, let them drain within GRACEFUL_TIMEOUT, then leave with `code`."""
        if self.parent.state is ParentState.STOPPING:
            return
        self.parent.change(ParentState.STOPPING)
        self.parent.stop_code = code
        self.notifier.stopping()
        log.info("stopping", code=code, grace_seconds=self.settings.graceful_timeout)
        for child in list(self.children):
            if child.state is State.BACKOFF:
                self.children.end(child)
            else:
                self.stop_child(child, lifecycle.SHUTDOWN)

    # ---- what the loop knows -----------------------------------------------------------

    def due_for_replacement(self, child: Child) -> str:
        """Why an UP child should hand its slot to a successor: a reason, or ""."""
        if child.state not in UP:
            return ""
        if child.generation < self.generation:
            return lifecycle.RELOAD
        if child.beat.request == lifecycle.RECYCLE:
            return lifecycle.RECYCLE
        limit = self.settings.worker_blocked_timeout
        if child.state is State.BLOCKED and self.clock() - child.since > limit:
            return lifecycle.BLOCKED
        return ""
