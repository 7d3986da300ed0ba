"""The command-line tools against the real services."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sample_request


def cli(env: dict, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(90)
def test_submit_waits_for_and_prints_each_response(consumer, env, db, tmp_path):
    consumer()
    requests = [sample_request() for _ in range(3)]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in requests))
    result = cli(env, "submit", str(path), "--wait", "30")
    assert result.returncode == 0, result.stderr
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["request_id"] for r in responses} == {r["request_id"] for r in requests}
    assert all(r["status"] == "success" for r in responses)
    shown = cli(env, "show", responses[0]["report_id"])
    assert shown.returncode == 0 and requests[0]["disclaimer"] in shown.stdout
    by_request = json.loads(cli(env, "show", requests[1]["request_id"], "--request", "--json").stdout)
    assert by_request["request_id"] == requests[1]["request_id"]
    assert cli(env, "show", "no-such-report").returncode == 1


@pytest.mark.timeout(90)
def test_submit_exits_non_zero_on_failed_response_on_timeout_and_on_missing_queue(consumer, env, db, broker):
    worker = consumer()
    bad = json.dumps(dict(sample_request(), labs="not a list"))
    result = cli(env, "submit", "-", "--wait", "30", stdin=bad)
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "failed"

    worker.stop()
    result = cli(env, "submit", "-", "--wait", "1", stdin=json.dumps(sample_request()))
    assert result.returncode == 1 and "timeout" in result.stderr

    missing = dict(env, RABBITMQ_REQUEST_QUEUE=env["RABBITMQ_REQUEST_QUEUE"] + ".missing")
    result = cli(missing, "submit", "-", stdin=json.dumps(sample_request()))
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_health_reports_each_service(env, mongo):
    result = cli(env, "health")
    checks = json.loads(result.stdout)
    assert result.returncode == 0, checks
    assert set(checks) == {"rabbitmq", "redis", "mongodb", "llm"} and all(c["ok"] for c in checks.values())
    result = cli(dict(env, REDIS_URL="redis://127.0.0.1:1/0"), "health")
    checks = json.loads(result.stdout)
    assert result.returncode == 1 and not checks["redis"]["ok"] and checks["mongodb"]["ok"]


@pytest.mark.timeout(90)
def test_dlq_list_replay_and_purge(consumer, broker, env, db, names):
    worker = consumer()
    broker.publish(b"not json at all")
    broker.publish(json.dumps(dict(sample_request(request_id="dlq-1"), labs=5)).encode())
    broker.responses(1)
    from tests.services import wait_for
    wait_for(lambda: broker.depth(names["RABBITMQ_DLQ"]) == 2, 20)

    listed = [json.loads(line) for line in cli(env, "dlq", "list").stdout.splitlines()]
    assert len(listed) == 2 and {entry["reason"] for entry in listed} == {"invalid"}
    assert "dlq-1" in {entry["request_id"] for entry in listed}
    wait_for(lambda: broker.depth(names["RABBITMQ_DLQ"]) == 2, 10)  # listing keeps them

    worker.stop()
    result = cli(env, "dlq", "replay", "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"replayed": 1}
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 1 and broker.depth(names["RABBITMQ_DLQ"]) == 1
    [(properties, _)] = broker.take(names["RABBITMQ_REQUEST_QUEUE"])
    assert "x-death-reason" not in (properties.headers or {})
    assert json.loads(cli(env, "dlq", "purge").stdout) == {"purged": 1}
    assert broker.depth(names["RABBITMQ_DLQ"]) == 0


@pytest.mark.timeout(60)
def test_kb_import_and_list(env, mongo, names, tmp_path):
    path = tmp_path / "kb.jsonl"
    entries = [{"id": f"kb-x-{i}", "category": "nutrition", "title": f"T{i}", "content": "c",
                "source_url": "https://www.who.int/news-room/fact-sheets/detail/healthy-diet"} for i in range(3)]
    path.write_text("\n".join(json.dumps(e) for e in entries))
    result = cli(env, "kb", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"imported": 3} and "3/3" in result.stderr
    assert json.loads(cli(env, "kb", "import", str(path)).stdout) == {"imported": 3}  # upsert: no duplicates
    listed = [json.loads(line) for line in cli(env, "kb", "list", "--category", "nutrition").stdout.splitlines()]
    assert [e["id"] for e in listed] == ["kb-x-0", "kb-x-1", "kb-x-2"]
    assert all(e["status"] == "active" for e in listed)
    sample = cli(env, "kb", "import")
    assert json.loads(sample.stdout)["imported"] >= 20
    client = mongo.client()
    client.drop_database(names["MONGODB_DATABASE"])
    client.close()
