"""The message contract and settings, without services."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sample_request
from worker.errors import InvalidRequest
from worker.intake import identify, scan_ids, validate
from worker.schemas import ReportGenerationRequest, ReportGenerationResponse
from worker.settings import SettingsError, load, parse_prices, redact_url

pytestmark = pytest.mark.timeout(30)


def body(**changes) -> bytes:
    return json.dumps(sample_request(**changes)).encode()


def test_sample_request_validates_and_extra_fields_are_tolerated():
    request = validate(body(extra_field={"x": 1}), 1 << 20)
    assert isinstance(request, ReportGenerationRequest)
    assert not hasattr(request, "extra_field")


@pytest.mark.parametrize("field,value", [
    ("labs", "a string"), ("patient", ["a list"]), ("disclaimer", 7), ("request_id", True),
    ("user_id", 1.5),
    ("user_id", ""), ("request_id", "has spaces"), ("plan", [1, 2]), ("red_flags", {"a": 1}),
])
def test_wrong_types_are_rejected_with_the_field_named(field, value):
    with pytest.raises(InvalidRequest) as caught:
        validate(body(**{field: value}), 1 << 20)
    assert field in str(caught.value)


def test_too_large_is_rejected_before_parsing_and_keeps_ids():
    with pytest.raises(InvalidRequest, match="more than the limit") as caught:
        validate(body(request_id="r-big", patient={"x": "y" * 5000}), 1000)
    assert caught.value.request_id == "r-big"


def test_unreadable_bodies_are_invalid_without_ids():
    for raw in (b"\xff\xfe", b"not json", b"[" * 10000 + b"]" * 10000, b"", b"null"):
        with pytest.raises(InvalidRequest) as caught:
            validate(raw, 1 << 20)
        assert caught.value.request_id == ""


def test_non_json_content_type_is_invalid():
    with pytest.raises(InvalidRequest, match="content type"):
        validate(body(), 1 << 20, "text/plain")
    assert validate(body(), 1 << 20, "application/json; charset=utf-8")


def test_ids_are_read_best_effort():
    assert identify(b'{"request_id": "a", "user_id": "b", "labs": 3}') == ("a", "b")
    assert identify(b'{"request_id": 5}') == ("5", "")  # integer ids are read as strings
    assert identify(b'{"request_id": true, "user_id": "has spaces"}') == ("", "")
    assert scan_ids(b'{"request_id": "abc", "patient": {"notes": "') == ("abc", "")


def test_response_json_matches_the_backend_contract():
    response = ReportGenerationResponse(request_id="r", user_id="u", report_id="p", status="success")
    data = json.loads(response.to_bytes())
    assert set(data) == {"request_id", "user_id", "report_id", "status", "error_code", "retryable", "error_message",
                         "timestamp"}
    assert data["timestamp"].endswith("Z")


def test_settings_precedence_file_then_env_then_flags(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('worker_threads = 3\nrabbitmq_prefetch_count = 5\nopenai_base_url = "http://llm/v1"\n')
    settings = load({}, config, {})
    assert (settings.worker_threads, settings.prefetch) == (3, 5)
    settings = load({"WORKER_THREADS": "6"}, config, {})
    assert settings.worker_threads == 6
    settings = load({"WORKER_THREADS": "6"}, config, {"worker_threads": 9})
    assert settings.worker_threads == 9


def test_settings_defaults_and_derived_values():
    settings = load({"OPENAI_API_KEY": "k"})
    assert settings.request_queue == "report_generation_requests"
    assert settings.prefetch == settings.worker_threads == 8
    assert settings.retry_delays == (5.0, 30.0, 300.0)
    assert settings.retry_queue(30.0) == "report_generation_requests.retry.30s"
    assert [settings.retry_delay(a) for a in (2, 3, 4, 9)] == [5.0, 30.0, 300.0, 300.0]


@pytest.mark.parametrize("environ,named", [
    ({"WORKER_THREADS": "zero"}, "WORKER_THREADS"),
    ({"WORKER_THREADS": "0"}, "WORKER_THREADS"),
    ({"RABBITMQ_QUEUE_TYPE": "stream"}, "RABBITMQ_QUEUE_TYPE"),
    ({"RETRY_DELAYS": "5,-1"}, "RETRY_DELAYS"),
    ({"RABBITMQ_URL": "http://x"}, "RABBITMQ_URL"),
    ({"MONGODB_URL": "postgres://x"}, "MONGODB_URL"),
    ({"OPENAI_BASE_URL": ""}, "OPENAI_API_KEY"),
    ({"LLM_PRICES": "gpt-4o=cheap"}, "LLM_PRICES"),
    ({"RABBITMQ_QUEUE_TYPE": "quorum", "RABBITMQ_DELIVERY_LIMIT": "3"}, "RABBITMQ_DELIVERY_LIMIT"),  # ≤ POISON_CRASH_LIMIT
])
def test_bad_settings_are_named(environ, named):
    with pytest.raises(SettingsError, match=named):
        load({"OPENAI_API_KEY": "k", **environ} if named != "OPENAI_API_KEY" else environ)


def test_the_delivery_limit_is_checked_against_the_poison_limit_only_where_it_applies():
    # classic queues have no delivery limit: a high poison limit (the kill-storm fault test's) is no error
    assert load({"OPENAI_API_KEY": "k", "POISON_CRASH_LIMIT": "1000"}).poison_crash_limit == 1000
    with pytest.raises(SettingsError, match="RABBITMQ_DELIVERY_LIMIT"):
        load({"OPENAI_API_KEY": "k", "POISON_CRASH_LIMIT": "1000", "RABBITMQ_QUEUE_TYPE": "quorum"})


def test_quorum_request_queue_dead_letters_to_the_dlq_beyond_the_delivery_limit():
    from worker.topology import queue_arguments
    quorum = load({"OPENAI_API_KEY": "k", "RABBITMQ_QUEUE_TYPE": "quorum"})
    request = queue_arguments(quorum)[quorum.request_queue]
    assert request == {"x-queue-type": "quorum", "x-delivery-limit": 20, "x-dead-letter-exchange": "",
                       "x-dead-letter-routing-key": quorum.dlq, "x-dead-letter-strategy": "at-least-once",
                       "x-overflow": "reject-publish"}
    unlimited = load({"OPENAI_API_KEY": "k", "RABBITMQ_QUEUE_TYPE": "quorum", "RABBITMQ_DELIVERY_LIMIT": "0"})
    assert queue_arguments(unlimited)[unlimited.request_queue] == {"x-queue-type": "quorum"}
    classic = load({"OPENAI_API_KEY": "k"})
    assert queue_arguments(classic)[classic.request_queue] == {}


def test_price_table_is_configurable():
    assert parse_prices("gpt-4o=2.5:10, local=0:0") == {"gpt-4o": (2.5, 10.0), "local": (0.0, 0.0)}


def test_unknown_key_in_the_config_file_is_refused(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("worker_thread = 3\n")
    with pytest.raises(SettingsError, match="unknown setting WORKER_THREAD"):
        load({"OPENAI_API_KEY": "k"}, config)


def test_passwords_are_redacted():
    assert redact_url("amqp://guest:secret@host:5672/") == "amqp://guest:***@host:5672/"
    shown = load({"OPENAI_API_KEY": "sk-secret", "REDIS_URL": "redis://:pw@h:6379/0"}).redacted()
    assert shown["openai_api_key"] == "***" and "pw" not in shown["redis_url"]


def test_cli_exits_non_zero_with_one_line_naming_the_setting():
    result = subprocess.run([sys.executable, "-m", "worker.cli", "consume"], cwd=ROOT, capture_output=True,
                            text=True, env={"WORKER_THREADS": "-2", "OPENAI_API_KEY": "k", "PATH": "/usr/bin"},
                            timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WORKER_THREADS" in lines[0]
