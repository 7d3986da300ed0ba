"""The parent's main loop: fork N children, reap, replace, kill the hung, roll, recycle, notify systemd."""

import os
import time
from typing import Callable, Mapping

from metrics.multiprocess import MetricsDirectory
from supervisor import tuning
from supervisor.child import TEST_HANG_ENV
from supervisor.children import Children
from supervisor.notify import Notifier
from supervisor.restarts import RestartLimit, backoff_delay
from supervisor.signals import NAMES, SignalQueue, blocked
from supervisor.states import Child, State, change_state
from worker import exitcodes, logs
from worker.logs import EventLog
from worker.settings import Settings, SettingsError

log = EventLog(__name__)

TICK = 0.2          # longest wait between two turns of the loop when no signal arrives
STOP_MARGIN = 5.0   # beyond GRACEFUL_TIMEOUT: time for a drained child to close its connections and exit


def serve(load_settings: Callable[[], Settings], metrics_directory: MetricsDirectory | None = None,
          environ: Mapping[str, str] = os.environ) -> int:
    """`report-worker run`: validate the settings once, then supervise until a signal says stop."""
    settings = load_settings()
    logs.configure(settings.log_level, worker=settings.name, role="arbiter")
    tuning.check_consumer_timeout(settings)
    hang = environ.get(TEST_HANG_ENV)
    children = Children(float(hang) if hang else None)
    arbiter = Arbiter(settings, load_settings, Notifier.from_environ(environ), children)
    if metrics_directory is None:
        return arbiter.run()
    from metrics.endpoint import attach

    endpoint = attach(arbiter, metrics_directory)
    with blocked():  # the endpoint's threads must not take the parent's signals
        endpoint.start()
    try:
        return arbiter.run()
    finally:
        endpoint.stop()


class Arbiter:
    """Keeps `wanted` children consuming; signals and the exits of children decide what happens next.

    To extend the loop (metrics), append to `tick_steps` (called every turn, at most TICK apart) and
    to `on_spawn(child)`, `on_exit(child, counted_as_restart)` and `on_reload(settings)`.
    """

    def __init__(self, settings: Settings, load_settings: Callable[[], Settings], notifier: Notifier,
                 children: Children):
        self.settings = settings
        self.load_settings = load_settings
        self.notifier = notifier
        self.children = children
        self.wanted = settings.worker_processes
        self.generation = 1                   # bumped by HUP; children of older generations are replaced
        self.restarts = RestartLimit(settings.restart_limit, settings.restart_window)
        self.signals = SignalQueue()
        self.started_at = time.monotonic()
        self.ready = False                    # READY=1 was sent
        self.reloading = False
        self.stop_code: int | None = None     # set once stopping: the exit code when every child is gone
        self.exit_code: int | None = None
        self.tick_steps: list[Callable[[], None]] = [
            self.reap_children, self.read_heartbeats, self.murder_hung,
            self.manage_children, self.replace_retiring, self.notify_systemd,
        ]
        self.on_spawn: list[Callable[[Child], None]] = []
        self.on_exit: list[Callable[[Child, bool], None]] = []
        self.on_reload: list[Callable[[Settings], None]] = []

    @property
    def slots(self) -> dict[int, Child]:
        return self.children.slots

    def run(self) -> int:
        self.signals.install()
        log.info("arbiter_started", processes=self.wanted, threads=self.settings.worker_threads,
                 prefetch=self.settings.prefetch, timeout=self.settings.worker_timeout,
                 heartbeats=self.children.heartbeats.path)
        try:
            while True:
                for step in self.tick_steps:
                    step()
                if self.exit_code is not None:
                    break
                for signum in self.signals.wait(TICK):
                    self.dispatch(signum)
        except Exception:
            log.error("arbiter_crashed", exc_info=True)
            self.exit_code = exitcodes.FAILURE
        finally:
            self.children.close()
        log.info("arbiter_stopped", code=self.exit_code, reason=exitcodes.describe(self.exit_code))
        return self.exit_code

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
        for child in self.children.processes():
            self.children.kill(child, "quit")

    def handle_hup(self) -> None:
        if self.stop_code is not None:
            return
        try:
            settings = self.load_settings()
        except SettingsError as exc:
            log.error("reload_failed", error=str(exc), hint="still running with the previous settings")
            return
        self.notifier.reloading()
        logs.configure(settings.log_level, worker=settings.name, role="arbiter")
        tuning.check_consumer_timeout(settings)
        self.settings, self.wanted, self.reloading = settings, settings.worker_processes, True
        self.generation += 1
        self.restarts = RestartLimit(settings.restart_limit, settings.restart_window)
        log.info("reloading", generation=self.generation, processes=self.wanted)
        for hook in self.on_reload:
            hook(settings)

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
        for child in self.children.read_heartbeats():
            child.failures = 0
            self.restarts.succeeded()
            log.info("child_ready", **child.describe(), seconds=round(time.monotonic() - child.started_at, 3))

    def murder_hung(self) -> None:
        now = time.monotonic()
        start_timeout = 2 * self.settings.connect_timeout + self.settings.worker_timeout
        for child in self.children.processes():
            if child.killed:
                continue
            if child.state is State.STARTING and now - child.started_at > start_timeout:
                self.children.kill(child, "start_timeout")
            elif child.state is State.RUNNING and now - child.beat_at > self.settings.worker_timeout:
                self.children.kill(child, "hung")
            elif child.state is State.STOPPING and now > child.stop_deadline:
                self.children.kill(child, "stop_timeout")

    def manage_children(self) -> None:
        """Move the children toward the wanted count (and, when stopping, finish once all are gone)."""
        if self.stop_code is not None:
            if not self.children.processes():
                self.exit_code = self.stop_code
            return
        now = time.monotonic()
        for index in range(1, self.wanted + 1):
            child = self.slots.get(index)
            if child is None:
                self.spawn(index)
            elif child.state is State.BACKOFF and now >= child.retry_at:
                change_state(child, State.EXITED)
                self.spawn(index, failures=child.failures)
        for index in sorted(i for i in self.slots if i > self.wanted):
            child = self.slots.pop(index)
            if child.state is State.BACKOFF:
                change_state(child, State.EXITED)
            else:
                self.stop_child(child, "scale_down")

    def replace_retiring(self) -> None:
        """Rolling replacement (HUP, recycle), one slot at a time: a successor starts in the slot, and
        its predecessor stops only once the successor consumes, so capacity never drops to zero."""
        if self.stop_code is not None:
            return
        for old in [c for c in self.children.leaving if c.state is State.RUNNING]:
            current = self.slots.get(old.index)
            if current is None or current.state is State.RUNNING:
                self.stop_child(old, old.reason)
        if any(c.state is not State.RUNNING for c in self.slots.values()):
            return  # a successor is still coming up (or a slot is in backoff): one at a time
        for index, old in sorted(self.slots.items()):
            if old.generation < self.generation or old.wants_recycle:
                old.reason = "reload" if old.generation < self.generation else "recycle"
                self.children.leaving.append(old)
                new = self.spawn(index)
                log.info("child_replacing", **old.describe(), reason=old.reason, successor_pid=new.pid)
                return

    def notify_systemd(self) -> None:
        running = [c for c in self.slots.values() if c.state is State.RUNNING]
        all_up = len(running) == self.wanted == len(self.slots)
        inflight = sum(c.inflight for c in self.children.processes())
        if self.stop_code is not None:
            status = f"stopping: {len(self.children.processes())} children left, {inflight} in flight"
        else:
            status = f"{len(running)}/{self.wanted} children consuming, {inflight} in flight"
        if all_up and not self.ready:
            self.ready = True
            self.notifier.ready(status)
            log.info("ready", processes=self.wanted, seconds=round(time.monotonic() - self.started_at, 3))
        elif all_up and self.reloading and all(c.generation == self.generation for c in self.slots.values()):
            self.reloading = False
            self.notifier.ready(status)
            log.info("reloaded", generation=self.generation, processes=self.wanted)
        else:
            self.notifier.update_status(status)
        if self.healthy():
            self.notifier.watchdog(time.monotonic())

    # ---- decisions ----------------------------------------------------------------------------

    def spawn(self, index: int, failures: int = 0) -> Child:
        child = self.children.fork(index, self.generation, self.settings, failures)
        self.slots[index] = child
        for hook in self.on_spawn:
            hook(child)
        return child

    def child_exited(self, child: Child, code: int) -> None:
        """Act on why it left: planned, config error, recycle, crash while starting, crash while running."""
        now = time.monotonic()
        in_slot = self.slots.get(child.index) is child
        planned = not in_slot or child.state is State.STOPPING
        reason = child.reason = child.reason or exitcodes.describe(code)
        level = log.info if planned or code in (exitcodes.OK, exitcodes.RECYCLE) else log.warning
        level("child_exited", **child.describe(), code=code, reason=reason, settled=child.settled,
              uptime=round(now - child.started_at, 3))
        counted = not planned and code not in (exitcodes.CONFIG, exitcodes.RECYCLE)
        for hook in self.on_exit:
            hook(child, counted)
        if planned:
            change_state(child, State.EXITED)
            if in_slot:
                del self.slots[child.index]
        elif code == exitcodes.CONFIG:
            self.give_up(child, exitcodes.CONFIG, "a child found the configuration wrong; restarting will not help")
        elif code == exitcodes.RECYCLE:
            change_state(child, State.EXITED)
            self.spawn(child.index)
        elif not self.restarts.allow(now, failed_start=child.state is State.STARTING):
            self.give_up(child, exitcodes.GAVE_UP, f"more than {self.settings.restart_limit} restarts within "
                         f"{self.settings.restart_window:g} s or failed starts in a row")
        elif child.state is State.STARTING:
            child.failures += 1
            child.retry_at = now + backoff_delay(child.failures)
            change_state(child, State.BACKOFF)
            log.warning("child_backoff", **child.describe(), failures=child.failures,
                        retry_in=round(child.retry_at - now, 3))
        else:
            change_state(child, State.EXITED)
            new = self.spawn(child.index)
            log.info("child_restarted", index=child.index, old_pid=child.pid, child_pid=new.pid, reason=reason)

    def give_up(self, child: Child, code: int, message: str) -> None:
        change_state(child, State.EXITED)
        del self.slots[child.index]
        log.error("giving_up", code=code, reason=exitcodes.describe(code), message=message)
        self.begin_stop(code)

    def begin_stop(self, code: int) -> None:
        """Graceful: TERM every child, let them drain within GRACEFUL_TIMEOUT, then leave with `code`."""
        if self.stop_code is not None:
            return
        self.stop_code = code
        self.notifier.stopping()
        log.info("stopping", code=code, grace_seconds=self.settings.graceful_timeout)
        for child in [*self.slots.values(), *self.children.leaving]:
            if child.state is State.BACKOFF:
                change_state(child, State.EXITED)
            else:
                self.stop_child(child, "shutdown")
        self.slots.clear()

    def stop_child(self, child: Child, reason: str) -> None:
        self.children.stop(child, reason, self.settings.graceful_timeout + STOP_MARGIN)

    def healthy(self) -> bool:
        """For the watchdog: no slot in backoff and every running child beat within WORKER_TIMEOUT."""
        now = time.monotonic()
        return all(c.state is not State.BACKOFF for c in self.slots.values()) and all(
            now - c.beat_at <= self.settings.worker_timeout
            for c in self.children.processes() if c.state is State.RUNNING)
