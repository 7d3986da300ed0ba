"""`report-worker run` with the metrics endpoint wired in the way the lead is asked to wire it (test driver).

Usage: python -m tests.metrics_arbiter   (settings from the environment, like `report-worker run`)
The endpoint is attached around `Arbiter.run`, which is where `supervisor.arbiter.serve` should do it.
"""

import sys


def main() -> int:
    from metrics.multiprocess import prepare_directory

    directory = prepare_directory()                    # 1. before anything imports prometheus_client
    from metrics.endpoint import attach
    from supervisor import arbiter
    from worker.settings import load

    run = arbiter.Arbiter.run

    def run_with_endpoint(self) -> int:
        endpoint = attach(self, directory)             # 2. hooks into the arbiter's loop
        endpoint.start()                               # 3. HTTP server and queue poller threads
        try:
            return run(self)
        finally:
            endpoint.stop()                            # 4. on the way out

    arbiter.Arbiter.run = run_with_endpoint
    return arbiter.serve(load)


if __name__ == "__main__":
    sys.exit(main())
