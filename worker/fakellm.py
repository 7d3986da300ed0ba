"""A fake OpenAI-compatible chat server for tests and load runs, with injectable latency, faults, bad answers
and OpenAI's rate limits (requests and tokens per minute, answered with 429 and retry-after)."""

import argparse
import json
import signal
import sys
import threading

from worker.fakeanswers import MODES
from worker.fakehttp import Faults, Server, request_document  # noqa: F401 (request_document: tests read prompts)


class FakeLLM:
    """The fake server in a daemon thread: `with FakeLLM(latency=0.1) as fake: ReportWriter(base_url=fake.url, ...)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int | None = None, **settings) -> None:
        self._server = Server((host, port), Faults(**settings), seed)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeLLM":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()

    def stats(self) -> dict:
        return self._server.stats()

    def configure(self, **settings) -> None:
        self._server.configure(**settings)

    def set_mode(self, request_id: str, mode: str) -> None:
        self._server.set_mode(request_id, mode)

    def reset(self) -> None:
        self._server.reset()

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `report-worker fake-llm` options."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="latency spread, a fraction (0.2 = ±20%%)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of calls answered 500")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of calls answered 429")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="share of calls that hang 120 s")
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="share of answers that are not JSON")
    parser.add_argument("--mode", default="good", choices=sorted(MODES),
                        help="the answer to requests without their own mode (a request_id ending @fake:MODE)")
    parser.add_argument("--rpm", type=float, default=0.0, help="requests per minute admitted; more get 429 (0: off)")
    parser.add_argument("--tpm", type=float, default=0.0,
                        help="tokens per minute admitted (body bytes / 4 + max_tokens per call); more get 429 (0: off)")
    parser.add_argument("--burst-seconds", type=float, default=1.0,
                        help="how many seconds of the --rpm/--tpm rate may come at once (at least one call)")
    parser.add_argument("--seed", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then return 0."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # server threads inherit the block
    fake = FakeLLM(args.host, args.port, args.seed, latency=args.latency, jitter=args.jitter,
                   error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
                   timeout_rate=args.timeout_rate, malformed_rate=args.malformed_rate,
                   mode=getattr(args, "mode", "good"), rpm=getattr(args, "rpm", 0.0), tpm=getattr(args, "tpm", 0.0),
                   burst_seconds=getattr(args, "burst_seconds", 1.0))
    try:
        fake.start()
        print(json.dumps({"event": "fake_llm_listening", "url": fake.url}), flush=True)
        signal.sigwait(stop_signals)
        fake.stop()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.fakellm [options]`: the same server as `report-worker fake-llm`."""
    parser = argparse.ArgumentParser(prog="python -m worker.fakellm", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
