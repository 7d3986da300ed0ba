"""amqps:// to a second RabbitMQ node with a TLS listener and a CA made by the test; the RABBITMQ_TLS_* settings."""

import json

import pika
import pytest

from tests.conftest import sample_request
from tests.services import wait_for
from tests.tls_node import TLSRabbit, issue, make_ca
from worker import exitcodes
from worker.settings import SettingsError, load
from worker.tls import ssl_options


@pytest.fixture(scope="module")
def tls_rabbit():
    try:
        node = TLSRabbit().start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a second RabbitMQ node with TLS: {exc}")
    yield node
    node.stop()


@pytest.fixture
def tls_env(env, tls_rabbit):
    return {**env, "RABBITMQ_URL": tls_rabbit.url, "RABBITMQ_TLS_CA_FILE": str(tls_rabbit.ca)}


@pytest.fixture
def tls_channel(tls_env, names):
    """The test's own TLS connection to the second node (built with worker.tls, as the worker does)."""
    settings = load(tls_env)
    params = pika.URLParameters(settings.rabbitmq_url)
    params.ssl_options = ssl_options(settings)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    yield channel
    for key in ("RABBITMQ_REQUEST_QUEUE", "RABBITMQ_RESPONSE_QUEUE", "RABBITMQ_DLQ"):
        channel.queue_delete(names[key])
    connection.close()


def take_all(channel, queue: str) -> list[dict]:
    got = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append(json.loads(body))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_processes_a_request_over_tls(consumer, tls_env, tls_channel, names, db, llm, tls_rabbit):
    worker = consumer(**{k: tls_env[k] for k in ("RABBITMQ_URL", "RABBITMQ_TLS_CA_FILE")})
    request = sample_request()
    tls_channel.basic_publish("", names["RABBITMQ_REQUEST_QUEUE"], json.dumps(request).encode(),
                              pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    responses = wait_for(lambda: take_all(tls_channel, names["RABBITMQ_RESPONSE_QUEUE"]), 30,
                         message=f"no response over TLS; worker log:\n{worker.output()[-3000:]}")
    assert [(r["request_id"], r["status"]) for r in responses] == [(request["request_id"], "success")]
    assert db.medical_reports.count_documents({"request_id": request["request_id"]}) == 1
    connections = tls_rabbit.ctl("list_connections", "ssl", "name", "--quiet")
    assert "true" in connections.stdout, connections.stdout + connections.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_refuses_a_server_its_ca_did_not_sign(spawn, tls_env, tls_channel, names, llm, tmp_path):
    wrong_ca, _ = make_ca(tmp_path, "other-ca")
    tls_channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], durable=True)
    tls_channel.basic_publish("", names["RABBITMQ_REQUEST_QUEUE"], json.dumps(sample_request()).encode())
    worker = spawn(["consume"], {**tls_env, "RABBITMQ_TLS_CA_FILE": str(wrong_ca), "CONNECT_TIMEOUT": "3"})
    code = worker.wait(60)
    assert code == exitcodes.CONNECT, worker.output()[-3000:]
    assert "CERTIFICATE_VERIFY_FAILED" in worker.output(), worker.output()[-3000:]
    assert not worker.events("consuming")
    assert llm.stats()["calls"] == 0
    assert tls_channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], passive=True).method.message_count == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_health_over_tls_with_a_client_certificate(spawn, tls_env, tls_rabbit, tmp_path):
    cert, key = issue(tmp_path, (tls_rabbit.ca, tls_rabbit.ca_key), "client", common_name="report-worker")
    env = {**tls_env, "RABBITMQ_TLS_CERT_FILE": str(cert), "RABBITMQ_TLS_KEY_FILE": str(key)}
    health = spawn(["health"], env)
    health.wait(60)
    assert json.loads(health.output())["rabbitmq"]["ok"] is True, health.output()
    plain = spawn(["health"], {**env, "RABBITMQ_TLS_CA_FILE": str(make_ca(tmp_path, "other-ca")[0])})
    plain.wait(60)
    result = json.loads(plain.output())["rabbitmq"]
    assert result["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in result["error"]


# ---------------------------------------------------------------------------- settings only (no broker)

@pytest.mark.timeout(10)
def test_tls_files_need_amqps_and_must_be_readable(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    base = {"OPENAI_API_KEY": "k"}
    with pytest.raises(SettingsError, match="amqps://"):
        load({**base, "RABBITMQ_URL": "amqp://localhost/", "RABBITMQ_TLS_CA_FILE": str(ca)})
    with pytest.raises(SettingsError, match="RABBITMQ_TLS_CA_FILE"):
        load({**base, "RABBITMQ_URL": "amqps://localhost/", "RABBITMQ_TLS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(SettingsError, match="RABBITMQ_TLS_CERT_FILE"):
        load({**base, "RABBITMQ_URL": "amqps://localhost/", "RABBITMQ_TLS_KEY_FILE": str(ca)})


@pytest.mark.timeout(10)
def test_ssl_options_verify_the_server_and_its_name():
    assert ssl_options(load({"OPENAI_API_KEY": "k", "RABBITMQ_URL": "amqp://localhost/"})) is None
    options = ssl_options(load({"OPENAI_API_KEY": "k", "RABBITMQ_URL": "amqps://u:p@rabbit.internal:5671/"}))
    assert options.server_hostname == "rabbit.internal"
    assert options.context.check_hostname and options.context.verify_mode.name == "CERT_REQUIRED"
