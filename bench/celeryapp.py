"""Celery 5 doing report-worker's job for the `peer` benchmark: its task runs our own handler on the request.

Only the execution model differs from `report-worker run`: the task gets the same request JSON, runs
`worker.outcomes.handle` (intake validation, `pipeline.process` with the pipeline from
`worker.service.build_pipeline`, the same response) and publishes what it returns with a publisher
confirm before Celery acks the task message (acks late). Started by the bench as

    python -m celery -A bench.celeryapp worker --pool threads --concurrency C --queues QUEUE ...

with report-worker's environment (RABBITMQ_URL, MONGODB_*, REDIS_*, OPENAI_*, ...) plus
BENCH_CELERY_QUEUE (the task queue of this run) and BENCH_STAGES_DIR (where each worker process leaves
its stage timings when it stops). A bench-only module: Celery is the `bench` extra, never a runtime
dependency.

Responses go out through pika BlockingConnections, each used by one pool thread at a time (a small pool
per process, `Publisher`): every thread waits for its own confirm only, as a thread doing its own I/O
does. One lock-protected connection per process (report-worker's shape: its I/O thread publishes for all
threads) made publishing Celery's largest stage in a trial on a busy machine (0.47-0.54 s per report at
c=64 and c=128: threads queueing on the lock behind a confirm wait, under the GIL), which would have
measured our publisher rather than Celery.

Only the happy path is compared: a request that our handler retries goes to report-worker's delay queues
and from there to report-worker's request queue, which no one consumes in a Celery run (the run then
shows it unanswered).
"""

import json
import os
import queue
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pika
from celery import Celery, signals
from celery.exceptions import Reject
from pika.exceptions import AMQPConnectionError, NackError, UnroutableError

from worker import frames, logs
from worker.broker import connection_parameters
from worker.delivery import Delivery, Publish
from worker.events import Events, timed
from worker.outcomes import handle
from worker.service import build_pipeline, prepare_store
from worker.settings import Settings, load
from worker.topology import declare

TASK = "bench.report"
PROPERTIES = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent)


def configure(app: Celery, broker_url: str, task_queue: str) -> Celery:
    """The settings both the worker and the publisher of task messages use."""
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=task_queue,      # a direct exchange and a durable classic queue of this name
        task_acks_late=True,                # ack after the response is confirmed: at-least-once, like ours
        worker_prefetch_multiplier=1,       # prefetch = concurrency: one unacked message per slot, like pf = T
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_enable_remote_control=False,  # no pidbox queue and exchange per run
        worker_send_task_events=False,
        worker_hijack_root_logger=False,     # our JSON logs, configured like report-worker's children
    )
    return app


class StageSums(Events):
    """The pipeline's stage timings summed per stage (what report-worker's histogram holds as _sum/_count)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()

    def stage_timed(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] += seconds
            self.calls[stage] += 1

    def dump(self, path: Path) -> None:
        with self.lock:
            path.write_text(json.dumps({"seconds": dict(self.seconds), "calls": dict(self.calls)}))


class Publisher:
    """Confirmed publishes on a pool of connections, each used by one thread at a time: a thread takes one
    (or opens one when all are busy), publishes, waits for its own confirm, gives it back. A connection that
    failed is dropped and the publish tried once more on a new one."""

    def __init__(self, settings: Settings, ready: int = 4):
        self.settings = settings
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        connection = frames.connect(connection_parameters(settings, "celery-peer"))
        declare(connection, settings)  # the response queue exists before the first task runs
        connection.close()
        for _ in range(ready):
            self.idle.put(self._open())

    def _open(self):
        channel = frames.connect(connection_parameters(self.settings, "celery-peer")).channel()
        channel.confirm_delivery()
        return channel

    def publish(self, publish: Publish) -> None:
        for attempt in (1, 2):
            channel = self._take()
            try:
                self._publish(channel, publish)
                return
            except AMQPConnectionError:
                channel = None  # dropped; its connection is gone
                if attempt == 2:
                    raise
            finally:
                if channel is not None:
                    self.idle.put(channel)

    def _take(self):
        while True:
            try:
                channel = self.idle.get_nowait()
            except queue.Empty:
                return self._open()
            if channel.is_open:
                return channel

    @staticmethod
    def _publish(channel, publish: Publish) -> None:
        try:
            channel.basic_publish("", publish.routing_key, publish.body, publish.properties, mandatory=True)
        except UnroutableError:
            if not publish.fallback_key:
                raise
            channel.basic_publish("", publish.fallback_key, publish.body, publish.properties, mandatory=True)


class Runtime:
    """What one Celery worker process holds: settings, our pipeline, a publisher; built once per process."""

    _lock = threading.Lock()
    _current: "Runtime | None" = None

    def __init__(self):
        self.pid = os.getpid()
        self.settings = load()
        logs.configure(self.settings.log_level, worker=f"celery:{self.pid}")
        store = prepare_store(self.settings)
        if store is None:
            raise RuntimeError("MongoDB unreachable")
        self.stages = StageSums()
        self.pipeline = build_pipeline(self.settings, store, self.stages)
        self.publisher = Publisher(self.settings)

    @classmethod
    def get(cls) -> "Runtime":
        """This process's runtime; a forked child builds its own rather than use its parent's clients."""
        with cls._lock:
            if cls._current is None or cls._current.pid != os.getpid():
                cls._current = Runtime()
            return cls._current

    @classmethod
    def dump_stages(cls) -> None:
        directory = os.environ.get("BENCH_STAGES_DIR")
        if directory and cls._current is not None and cls._current.pid == os.getpid():
            cls._current.stages.dump(Path(directory) / f"stages-{os.getpid()}.json")


app = configure(Celery("bench.peer"), os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                os.environ.get("BENCH_CELERY_QUEUE", "bench.celery"))


@app.task(name=TASK, bind=True)
def report(self, body: str) -> None:
    """One request message: what report-worker's handler decides, then its publishes, each confirmed."""
    runtime = Runtime.get()
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    delivery = Delivery(body.encode(), PROPERTIES, 0, redelivered, None)
    settlement = handle(delivery, runtime.pipeline, runtime.settings)
    try:
        with timed(runtime.stages, "publish"):
            for publish in settlement.publishes:
                runtime.publisher.publish(publish)
    except (NackError, UnroutableError, AMQPConnectionError) as exc:
        raise Reject(f"response not confirmed: {type(exc).__name__}", requeue=True) from exc


@signals.worker_init.connect
def _warm_up_in_place(sender=None, **_) -> None:
    """Threads or solo pool: build before the consumer starts, so the bench's 'consuming' means ready."""
    pool = getattr(sender, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "").rsplit(".", 1)[-1]
    if name in ("thread", "threads", "solo"):
        Runtime.get()


@signals.worker_process_init.connect
def _warm_up_child(**_) -> None:
    """Prefork pool: each child builds its own clients after the fork."""
    Runtime.get()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _leave_stage_timings(**_) -> None:
    Runtime.dump_stages()
