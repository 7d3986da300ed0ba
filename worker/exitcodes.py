"""Why a worker process left: the child sets it, the parent decides what to do from it."""

OK = 0              # asked to stop, drained cleanly
FAILURE = 1         # crashed: an unexpected exception
CONFIG = 2          # the settings or the broker's queue arguments are wrong: restarting will not help
CONNECT = 3         # could not reach a required service at start within CONNECT_TIMEOUT
RECYCLE = 4         # left on purpose after max tasks or max memory; start a fresh one
GAVE_UP = 5         # the supervisor: children kept dying, the restart rate stayed too high

NAMES = {OK: "ok", FAILURE: "crash", CONFIG: "config_error", CONNECT: "cannot_connect", RECYCLE: "recycle",
         GAVE_UP: "gave_up"}


def describe(code: int) -> str:
    if code < 0:
        return f"signal_{-code}"
    return NAMES.get(code, f"exit_{code}")
