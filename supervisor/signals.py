"""The parent's signals: handlers only enqueue, the arbiter's loop takes them off and acts."""

import contextlib
import queue
import signal

NAMES = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin",
    signal.SIGTTOU: "ttou",
    signal.SIGCHLD: "chld",
}


class SignalQueue:
    """gunicorn's SIG_QUEUE: a SimpleQueue that a blocked `get` wakes up from when a signal arrives."""

    def __init__(self):
        self.queue: queue.SimpleQueue[int] = queue.SimpleQueue()

    def install(self) -> None:
        for signum in NAMES:
            signal.signal(signum, self._enqueue)

    def _enqueue(self, signum, frame) -> None:
        self.queue.put_nowait(signum)

    def wait(self, timeout: float) -> list[int]:
        """The signals that arrived, waiting up to `timeout` seconds for the first one."""
        try:
            arrived = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.queue.empty():
            arrived.append(self.queue.get_nowait())
        return arrived



@contextlib.contextmanager
def blocked():
    """Hold our signals back around fork(), so no handler of ours runs in a half-made child."""
    signal.pthread_sigmask(signal.SIG_BLOCK, NAMES)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, NAMES)


def reset_in_child() -> None:
    """In a fresh child: default TERM/INT/QUIT/CHLD (the worker installs its own), ignore HUP/TTIN/TTOU
    (meant for the parent; their default actions would stop or kill a child), then unblock."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, NAMES)
