"""Secrets come from the environment or systemd credentials ($CREDENTIALS_DIRECTORY), never from the TOML file."""

import json

import pytest

from tests.conftest import sample_request
from worker import exitcodes
from worker.settings import CREDENTIALS, SettingsError, load


def credentials(directory, **values):
    directory.mkdir(exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n")  # systemd-creds and `echo` leave a newline
    return str(directory)


@pytest.mark.timeout(10)
def test_credentials_directory_supplies_secrets_and_urls(tmp_path):
    assert {"openai_api_key", "request_signing_key", "rabbitmq_url", "redis_url", "mongodb_url"} <= set(CREDENTIALS)
    directory = credentials(tmp_path / "creds", openai_api_key="sk-from-credential",
                            rabbitmq_url="amqp://worker:rabbit-pw@rabbit:5672/",
                            mongodb_url="mongodb://worker:mongo-pw@mongo:27017/")
    settings = load({"CREDENTIALS_DIRECTORY": directory})
    assert settings.openai_api_key == "sk-from-credential"
    assert settings.rabbitmq_url == "amqp://worker:rabbit-pw@rabbit:5672/"
    assert settings.mongodb_url == "mongodb://worker:mongo-pw@mongo:27017/"
    assert settings.redis_url == "redis://localhost:6379/0"  # no file: the default stays
    shown = json.dumps(settings.redacted())
    assert "rabbit-pw" not in shown and "mongo-pw" not in shown and "sk-from-credential" not in shown


@pytest.mark.timeout(10)
def test_precedence_is_file_then_credentials_then_environment(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('redis_url = "redis://file-host:6379/0"\nopenai_model = "from-file"\n')
    directory = credentials(tmp_path / "creds", openai_api_key="sk-credential",
                            redis_url="redis://:pw@cred-host:6379/0")
    settings = load({"CREDENTIALS_DIRECTORY": directory}, config)
    assert settings.redis_url == "redis://:pw@cred-host:6379/0" and settings.openai_model == "from-file"
    settings = load({"CREDENTIALS_DIRECTORY": directory, "OPENAI_API_KEY": "sk-env"}, config)
    assert settings.openai_api_key == "sk-env"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("line, named", [
    ('openai_api_key = "sk-in-the-file"', "OPENAI_API_KEY"),
    ('REQUEST_SIGNING_KEY = "hmac-in-the-file"', "REQUEST_SIGNING_KEY"),
    ('rabbitmq_url = "amqp://worker:pw-in-the-file@rabbit:5672/"', "RABBITMQ_URL"),
    ('mongodb_url = "mongodb://worker:pw-in-the-file@mongo/"', "MONGODB_URL"),
])
def test_secrets_in_the_config_file_are_refused(tmp_path, line, named):
    config = tmp_path / "config.toml"
    config.write_text(line + "\n")
    with pytest.raises(SettingsError) as raised:
        load({"OPENAI_API_KEY": "k"}, config)
    message = str(raised.value)
    assert named in message and "in-the-file" not in message
    assert "environment" in message and "credential" in message


@pytest.mark.timeout(10)
def test_urls_without_a_password_are_fine_in_the_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('rabbitmq_url = "amqps://rabbit.internal:5671/"\nredis_url = "rediss://cache:6380/0"\n'
                      'mongodb_url = "mongodb://mongo:27017/?tls=true"\n')
    settings = load({"OPENAI_API_KEY": "k"}, config)
    assert settings.rabbitmq_url == "amqps://rabbit.internal:5671/"
    assert settings.redis_url == "rediss://cache:6380/0" and settings.mongodb_url.endswith("?tls=true")


@pytest.mark.timeout(10)
def test_unreadable_credential_is_a_clear_error(tmp_path):
    directory = tmp_path / "creds"
    (directory / "openai_api_key").mkdir(parents=True)  # a directory where a file belongs
    with pytest.raises(SettingsError, match="credential openai_api_key"):
        load({"CREDENTIALS_DIRECTORY": str(directory)})


@pytest.mark.timeout(90)
def test_worker_runs_on_credentials_alone(consumer, broker, db, env, tmp_path):
    """No secret in the environment: the API key and the broker URL come from credential files."""
    directory = credentials(tmp_path / "creds", openai_api_key="test-key", rabbitmq_url=env["RABBITMQ_URL"])
    del env["OPENAI_API_KEY"], env["RABBITMQ_URL"]
    consumer(CREDENTIALS_DIRECTORY=directory)
    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"


@pytest.mark.timeout(60)
def test_cli_refuses_a_key_in_the_config_file(spawn, env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('openai_api_key = "sk-must-not-be-printed"\n')
    worker = spawn(["consume", "--config", str(config)], env)
    assert worker.wait(30) == exitcodes.CONFIG
    assert "OPENAI_API_KEY" in worker.output() and "sk-must-not-be-printed" not in worker.output()
