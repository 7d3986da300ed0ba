"""`report-worker run` built from what the CLI hands over: settings, the child's body, an observer."""

import os
from typing import Callable, Mapping

from supervisor import tuning
from supervisor.arbiter import Arbiter
from supervisor.child import TEST_HANG_ENV, RunChild
from supervisor.notify import Notifier
from supervisor.observer import Observer
from supervisor.processes import Processes
from supervisor.signals import blocked
from worker import logs
from worker.settings import Settings


def serve(load_settings: Callable[[], Settings], run_child: RunChild,
          observer: Callable[[Settings], Observer] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """Validate the settings once, then supervise until a signal says stop; returns the exit code.

    `load_settings` is called again on HUP; `run_child(settings, on_tick)` is the body of every child;
    `observer(settings)`, if given, starts before the first fork and stops after the last child is gone.
    """
    settings = load_settings()
    logs.configure(settings.log_level, worker=settings.name, role="arbiter")
    tuning.check_consumer_timeout(settings)
    hang = environ.get(TEST_HANG_ENV)
    watcher = observer(settings) if observer else None
    if watcher is not None:
        with blocked():  # the observer's threads must not take the parent's signals
            watcher.start()
    try:
        processes = Processes(run_child, float(hang) if hang else None)
        return Arbiter(settings, load_settings, Notifier.from_environ(environ), processes,
                       [watcher] if watcher else []).run()
    finally:
        if watcher is not None:
            watcher.stop()
