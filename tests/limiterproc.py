"""A child process for the limiter tests: T threads take LLM permits from a FleetLimiter and print when (JSON lines)."""

import argparse
import json
import sys
import threading
import time

from worker.ratelimit import FleetLimiter, Limits, Throttled, connect

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
    parser.add_argument("--burst", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds to start at")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=1 << 30)
    args = parser.parse_args(argv)
    limits = Limits(rpm=args.rpm, max_concurrency=args.concurrency, burst_seconds=args.burst, lease_seconds=args.lease)
    limiter = FleetLimiter(connect(args.url), args.prefix, limits)
    say("ready")
    time.sleep(max(0.0, args.start_at - time.time()))
    end = max(args.start_at, time.time()) + args.seconds
    threads = [threading.Thread(target=take, args=(limiter, n, end, args.hold, args.count)) for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say("done")
    sys.exit(0)


if __name__ == "__main__":
    main()
