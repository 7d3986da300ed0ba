"""Test helpers (not a test module): a throw-away CA made with the openssl CLI, and a second RabbitMQ node
with a TLS listener, started beside the main one.

The second node gets its own name (tls<port>@localhost), its own AMQP, TLS and distribution ports (all
free ones, never 5672/25672), its own data, log, config, plugins and env files in a temp directory,
so it cannot touch the main node; only EPMD (port 4369) is shared, which is what EPMD is for. It runs
as the `rabbitmq` user (the Debian wrapper switches to it), so its directory is readable by that user.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.services import free_port

START_DEADLINE = 90.0


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN=report-worker test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], name: str, common_name: str = "localhost") -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 signed by `ca`, usable by a server and a client."""
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={common_name}", cwd=directory)
    ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", cert.name, "-days", "2", "-extfile", ext.name, cwd=directory)
    return cert, key


class TLSRabbit:
    """A second RabbitMQ node whose only AMQP listener that matters speaks TLS."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="report-worker-tls-"))
        self.tls_port, self.tcp_port, self.dist_port = free_port(), free_port(), free_port()
        self.node = f"tls{self.tls_port}@localhost"
        self.ca, self.ca_key = make_ca(self.directory, "ca")
        self.server_cert, self.server_key = issue(self.directory, (self.ca, self.ca_key), "server")

    @property
    def url(self) -> str:
        return f"amqps://guest:guest@localhost:{self.tls_port}/"

    def _env(self) -> dict:
        d = self.directory
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.tcp_port}\n"
            f"listeners.ssl.local = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.ca}\n"
            f"ssl_options.certfile = {self.server_cert}\n"
            f"ssl_options.keyfile = {self.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            "loopback_users = none\n")
        (d / "enabled_plugins").write_text("[].\n")           # no management listener on 15672
        (d / "rabbitmq-env.conf").write_text(  # not the main node's file, which names that node
            "ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n")
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.tcp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        }

    def _give_to_rabbitmq(self) -> None:
        try:
            user = pwd.getpwnam("rabbitmq")
        except KeyError:
            return  # RabbitMQ runs as whoever we are
        for path in [self.directory, *self.directory.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.directory, 0o700)

    def start(self) -> "TLSRabbit":
        for tool in ("rabbitmq-server", "rabbitmqctl", "openssl"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} is not installed")
        env = self._env()
        self._give_to_rabbitmq()
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            probe = self.ctl("await_startup", "--timeout", "5")
            if probe.returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ node {self.node} did not start within {START_DEADLINE:.0f} s: "
                                   f"{probe.stdout[-500:]}{probe.stderr[-500:]}\nlog: {self.log()[-2000:]}")
            time.sleep(0.5)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rabbitmqctl", "-n", self.node, *args], capture_output=True, text=True, timeout=60)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.directory / "log").glob("*.log"))

    def stop(self) -> None:
        """Stop this node only (by its name), then remove its files."""
        stopped = self.ctl("stop")
        if stopped.returncode != 0:
            pid_file = self.directory / "rabbit.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 9)
                except (ValueError, ProcessLookupError):
                    pass
        shutil.rmtree(self.directory, ignore_errors=True)
