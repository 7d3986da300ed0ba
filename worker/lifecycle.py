"""The words of a child's life, shared by the child, the parent and the metrics. Imports nothing of ours.

Phases are what a child's heartbeat says it is doing: the consumer's `status().phase`, plus STARTING,
which the parent writes before the child runs. Reasons say why a child left or was replaced: the
`reason` of the parent's log lines and of report_worker_child_restarts_total, and the names of the
exit codes in worker/exitcodes.py. Dashboards and alerts match these strings: keep them.
"""

from dataclasses import dataclass

# -- phases (heartbeat) --------------------------------------------------------------------------
STARTING = "starting"       # forked, opening its clients (MongoDB first)
CONNECTING = "connecting"   # no channel: connecting to RabbitMQ at start, or reconnecting
CONSUMING = "consuming"     # consuming the request queue
BLOCKED = "blocked"         # consuming, but RabbitMQ holds its publishes back (memory/disk alarm, late confirm)
PAUSED = "paused"           # connected, but takes no messages: the LLM refused its key, the budget is spent, ...
DRAINING = "draining"       # stopped consuming, finishing in-flight work
PHASES = (STARTING, CONNECTING, CONSUMING, BLOCKED, PAUSED, DRAINING)

# -- what a child asks of the parent in its heartbeat ----------------------------------------------
RECYCLE = "recycle"         # max tasks or max memory reached: start my successor, then stop me

# -- reasons: the child's own, named after its exit code ------------------------------------------
OK = "ok"                           # asked to stop, drained cleanly
CRASH = "crash"                     # an unexpected exception
CONFIG_ERROR = "config_error"       # settings or the broker's queue arguments are wrong
CANNOT_CONNECT = "cannot_connect"   # a required service did not answer within CONNECT_TIMEOUT
GAVE_UP = "gave_up"                 # (the parent) children kept dying
# RECYCLE (above) is a reason too: the child left after max tasks or max memory

# -- reasons: the parent's ------------------------------------------------------------------------
HUNG = "hung"                       # heartbeat silent longer than WORKER_TIMEOUT: SIGKILL
START_TIMEOUT = "start_timeout"     # not consuming within 2 x CONNECT_TIMEOUT + WORKER_TIMEOUT: SIGKILL
STOP_TIMEOUT = "stop_timeout"       # still draining after GRACEFUL_TIMEOUT + a margin: SIGKILL
QUIT = "quit"                       # SIGQUIT to the parent: SIGKILL
RELOAD = "reload"                   # forked with settings older than the last HUP: replaced
SHUTDOWN = "shutdown"               # the parent stops (TERM/INT, or it gives up)
SCALE_DOWN = "scale_down"           # TTOU: one child fewer
FORK_FAILED = "fork_failed"         # fork() itself failed (EAGAIN at TasksMax, ENOMEM): the slot backs off
# BLOCKED (above) is a reason too: blocked longer than WORKER_BLOCKED_TIMEOUT, replaced

REPLACED = frozenset({RECYCLE, RELOAD, BLOCKED})   # a successor took over first: a restart, but a planned one


def signal_reason(signum: int) -> str:
    return f"signal_{signum}"


def exit_reason(code: int) -> str:
    return f"exit_{code}"


@dataclass(frozen=True)
class Status:
    """What the supervisor may know of a consumer: its phase, counts, and when its I/O loop last turned."""

    phase: str          # connecting, consuming, blocked, paused, draining (the phases above)
    settled: int        # deliveries settled since start
    inflight: int       # deliveries received and not settled yet
    ticked_at: float    # time.monotonic() of the I/O loop's last turn; it stops while a confirm is awaited
    paused: tuple[str, ...] = ()   # why it takes no messages now (llm_unauthorized, budget_exhausted, ...)
    node: str = ""      # host:port of the broker node of the current connection ("" when none)
