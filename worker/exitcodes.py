"""Why a worker process left, as its exit code: the child sets it, the parent decides what to do from it."""

from worker import lifecycle

OK = 0              # asked to stop, drained cleanly
FAILURE = 1         # crashed: an unexpected exception
CONFIG = 2          # the settings or the broker's queue arguments are wrong: restarting will not help
CONNECT = 3         # could not reach a required service at start within CONNECT_TIMEOUT
RECYCLE = 4         # left on purpose after max tasks or max memory; start a fresh one
GAVE_UP = 5         # the supervisor: children kept dying, the restart rate stayed too high

NAMES = {OK: lifecycle.OK, FAILURE: lifecycle.CRASH, CONFIG: lifecycle.CONFIG_ERROR,
         CONNECT: lifecycle.CANNOT_CONNECT, RECYCLE: lifecycle.RECYCLE, GAVE_UP: lifecycle.GAVE_UP}


def describe(code: int) -> str:
    """The reason word for an exit code (negative: killed by that signal)."""
    if code < 0:
        return lifecycle.signal_reason(-code)
    return NAMES.get(code, lifecycle.exit_reason(code))
