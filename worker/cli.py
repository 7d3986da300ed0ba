"""The `report-worker` command line."""

import argparse
import json
import logging
import os
import ssl
import sys

from pika.exceptions import AMQPConnectionError

from worker import exitcodes, logs
from worker.settings import Settings, SettingsError, load


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "worker_threads": getattr(args, "threads", None),
        "prefetch_count": getattr(args, "prefetch", None),
        "worker_processes": getattr(args, "processes", None),
        "worker_timeout": getattr(args, "timeout", None),
        "max_tasks_per_child": getattr(args, "max_tasks_per_child", None),
        "max_memory_per_child": getattr(args, "max_memory_per_child", None),
        "metrics_port": getattr(args, "metrics_port", None),
    }
    return load(config_file=args.config, overrides=overrides)


def cmd_consume(args) -> int:
    from metrics.events import PrometheusEvents  # records into PROMETHEUS_MULTIPROC_DIR when one is set
    from worker import service

    settings = _settings(args)
    logs.configure(settings.log_level, worker=settings.name)
    code = service.run(settings, events=PrometheusEvents())
    _exit_now(code)


def cmd_run(args) -> int:
    """The composition root of `run`: the supervisor, the children's body and the metrics endpoint meet here."""
    from metrics.multiprocess import prepare_directory

    directory = prepare_directory()  # before anything imports prometheus_client: children inherit the mode
    from metrics.endpoint import Endpoint
    from metrics.events import PrometheusEvents
    from supervisor import service as supervisor
    from worker import service

    return supervisor.serve(
        lambda: _settings(args),                                   # HUP calls it again: same --config, same flags
        run_child=lambda settings, on_tick, journal: service.run(settings, on_tick, PrometheusEvents(), journal),
        observer=lambda settings: Endpoint(settings, directory),
    )


def cmd_submit(args) -> int:
    from worker import submit

    return submit.run(_settings(args), args.file, args.wait, args.priority, args.new_ids)


def cmd_health(args) -> int:
    from worker import health

    result = health.report(_settings(args))
    print(json.dumps(result, indent=2))
    return 0 if all(check["ok"] for check in result.values()) else 1


def cmd_dlq(args) -> int:
    from worker import deadletters

    settings = _settings(args)
    if args.action == "list":
        deadletters.list_messages(settings, args.limit, sys.stdout)
    elif args.action == "replay":
        print(json.dumps({"replayed": deadletters.replay(settings, args.limit)}))
    else:
        print(json.dumps({"purged": deadletters.purge(settings)}))
    return 0


def cmd_kb(args) -> int:
    from worker import clients, kbfiles

    settings = _settings(args)
    store = clients.store(settings)
    try:
        if args.action == "import":
            store.ensure_indexes()
            path = kbfiles.sample_path() if args.file == "sample" else args.file
            print(json.dumps({"imported": kbfiles.import_file(store, path)}))
        else:
            for entry in store.list_knowledge(args.category):
                print(json.dumps(entry, default=str))
    finally:
        store.close()
    return 0


def cmd_show(args) -> int:
    from worker import clients

    settings = _settings(args)
    store = clients.store(settings)
    try:
        key = "request_id" if args.request else "report_id"
        report = store.reports.find_one({key: args.id}, {"_id": 0})
    finally:
        store.close()
    if report is None:
        print(f"report-worker: no report with {key} {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(report, default=str, indent=2) if args.json else report["markdown_content"])
    return 0


def cmd_schema(args) -> int:
    from pathlib import Path

    from worker import contract

    if args.write:
        for name in contract.MODELS:
            (Path(args.write) / f"{name}.json").write_text(contract.schema_text(name), encoding="utf-8")
        return 0
    if not args.name:
        print("report-worker schema: name request, response or report (or --write DIR)", file=sys.stderr)
        return exitcodes.CONFIG
    sys.stdout.write(contract.schema_text(args.name))
    return 0


def cmd_eval(args) -> int:
    from worker import evalrun

    overrides = {"openai_model": args.model} if args.model else {}
    settings = load(config_file=args.config, overrides=overrides)
    logs.configure("ERROR")  # the summary is the output; the gate's refusals are counted in it
    return evalrun.run(settings, args.cases, args.kb, include_fake=not args.real_only, out=sys.stdout,
                       as_json=args.json)


def cmd_fake_llm(args) -> int:
    from worker import fakellm  # test and demo tooling: imported only for this command

    options = argparse.ArgumentParser(prog="report-worker fake-llm", description=fakellm.__doc__)
    fakellm.add_arguments(options)
    return fakellm.run(options.parse_args(args.options))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="report-worker", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML settings file (environment overrides it)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("consume", parents=[common], help="run one consumer process in the foreground")
    p.add_argument("--threads", type=int, help="worker threads (WORKER_THREADS)")
    p.add_argument("--prefetch", type=int, help="prefetch count (RABBITMQ_PREFETCH_COUNT)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("run", parents=[common], help="run the supervisor: N consumer processes, kept alive")
    p.add_argument("--processes", type=int, help="child processes (WORKER_PROCESSES, default: CPU count)")
    p.add_argument("--threads", type=int, help="worker threads per child (WORKER_THREADS)")
    p.add_argument("--prefetch", type=int, help="prefetch count per child (RABBITMQ_PREFETCH_COUNT)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill and replace a child whose I/O loop is silent this long (WORKER_TIMEOUT)")
    p.add_argument("--max-tasks-per-child", type=int, metavar="N", help="recycle a child after N messages "
                   "(MAX_TASKS_PER_CHILD, plus up to MAX_TASKS_JITTER)")
    p.add_argument("--max-memory-per-child", type=int, metavar="MB",
                   help="recycle a child whose RSS exceeds MB megabytes (MAX_MEMORY_PER_CHILD)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="HTTP port of /metrics, /healthz, /readyz "
                   "(METRICS_PORT, default 9810; 0: off)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", parents=[common], help="publish requests like the backend does")
    p.add_argument("file", help="JSON object, array or JSON lines; - for stdin")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the responses and print them")
    p.add_argument("--priority", type=int, help="AMQP priority of the messages")
    p.add_argument("--new-ids", action="store_true", help="give every request a fresh request_id")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("health", parents=[common], help="ping RabbitMQ, Redis, MongoDB and the LLM")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("dlq", parents=[common], help="list, replay or purge dead-lettered requests")
    p.add_argument("action", choices=("list", "replay", "purge"))
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("kb", parents=[common], help="import or list knowledge-base entries")
    p.add_argument("action", choices=("import", "list"))
    p.add_argument("file", nargs="?", default="sample", help="JSON or JSON lines file ('sample': the bundled one)")
    p.add_argument("--category")
    p.set_defaults(func=cmd_kb)

    p = sub.add_parser("show", parents=[common], help="print a stored report (markdown, or --json)")
    p.add_argument("id", help="report_id (or request_id with --request)")
    p.add_argument("--request", action="store_true", help="look the report up by request_id")
    p.add_argument("--json", action="store_true", help="the whole stored document as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("schema", help="print the JSON Schema of the request, the response or the stored report")
    p.add_argument("name", nargs="?", choices=("request", "response", "report"))
    p.add_argument("--write", metavar="DIR", help="write all three as DIR/<name>.json (docs/schemas)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("eval", parents=[common], help="run the evaluation set through the configured LLM and the "
                       "report checks; print pass rates, calls and cost")
    p.add_argument("--model", help="the model to evaluate (default: OPENAI_MODEL)")
    p.add_argument("--cases", metavar="DIR", help="directory of cases (default: tests/data/eval of the checkout)")
    p.add_argument("--kb", metavar="FILE", help="knowledge base JSON (default: the bundled sample)")
    p.add_argument("--real-only", action="store_true", help="leave out the cases that need the fake LLM's bad modes")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fake-llm", add_help=False, help="serve an OpenAI-compatible fake LLM for tests and demos "
                       "(report-worker fake-llm --help lists its options)")
    p.add_argument("options", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_fake_llm)
    return top


def _exit_now(code: int):
    """Leave without waiting for worker threads still inside an LLM call (their messages are requeued)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if args.command == "fake-llm":  # its own options are parsed by worker.fakellm, imported only then
        args.options = [*extra, *args.options]
    elif extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"report-worker: configuration error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except (AMQPConnectionError, ssl.SSLError) as exc:
        print(f"report-worker: cannot reach RabbitMQ: {type(exc).__name__} {exc}".rstrip(), file=sys.stderr)
        return exitcodes.CONNECT


if __name__ == "__main__":
    sys.exit(main())
