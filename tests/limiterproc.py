"""A limiter test child: T threads take LLM permits and print when (JSON lines); `Child` runs one from a test."""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from worker.ratelimit import FleetLimiter, Limits, Throttled, connect

ROOT = Path(__file__).resolve().parent.parent
_print_lock = threading.Lock()


def say(event: str, **fields) -> None:
    with _print_lock:
        print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def take(limiter: FleetLimiter, thread: int, end: float, hold: float, count: int) -> None:
    """Take permits until `end` (epoch) or `count` of them; hold each `hold` seconds (< 0: forever)."""
    taken = 0
    while time.time() < end and taken < count:
        try:
            permit = limiter.acquire(deadline=time.monotonic() + (end - time.time()))
        except Throttled as exc:
            say("throttled", thread=thread, reason=exc.reason)
            return
        with permit:
            say("start", thread=thread)
            taken += 1
            time.sleep(3600 if hold < 0 else hold)
            say("end", thread=thread)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rpm", type=float, default=0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--burst", type=float, default=0.5)
    parser.add_argument("--lease", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds to start at")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=1 << 30)
    args = parser.parse_args(argv)
    limits = Limits(rpm=args.rpm, max_concurrency=args.concurrency, burst_seconds=args.burst,
                    lease_seconds=args.lease)
    limiter = FleetLimiter(connect(args.url), args.prefix, limits)
    say("ready")
    time.sleep(max(0.0, args.start_at - time.time()))
    end = max(args.start_at, time.time()) + args.seconds
    threads = [threading.Thread(target=take, args=(limiter, n, end, args.hold, args.count))
               for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say("done")
    sys.exit(0)


class Child:
    """This program in a process of its own, from a test; its JSON lines gathered by a thread."""

    def __init__(self, url, prefix, *args):
        self.events = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.limiterproc", "--url", url, "--prefix", prefix, *map(str, args)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def times(self, event):
        return [e["t"] for e in self.events if e["event"] == event]

    def wait(self, event, count=1, timeout=15):
        deadline = time.monotonic() + timeout
        while len(self.times(event)) < count:
            assert time.monotonic() < deadline, f"no {count} x {event} within {timeout} s: {self.events}"
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def most_in_window(times, window):
    """The most events in any `window` seconds."""
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times)), default=0)


def max_overlap(starts, ends):
    """The most intervals open at once."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


if __name__ == "__main__":
    main()
