"""A single-node Apache Kafka broker (KRaft) from Apache Kafka's own jars for development and tests.

No Docker and no tarball: the jars of ``org.apache.kafka:kafka_2.13`` and a log4j2 backend are
resolved once by Maven (``pom.xml`` beside this file) into a cache directory outside the repository;
later starts reuse them without touching the network.

A started broker lives in a fresh temporary directory on free loopback ports. It is stopped by
:meth:`LocalKafka.stop` (SIGTERM, then SIGKILL after a bound), and the kernel kills it if the Python
process that started it dies first (``PR_SET_PDEATHSIG``), so no JVM outlives a test run, whether it
passed, failed, was interrupted or was killed. ``stop(keep_data=True)`` then ``start()`` restarts
the same broker, on the same ports with the same data: what a broker outage looks like to clients.

``LocalKafka(scram_users={"user": "password"})`` adds a ``SASL_PLAINTEXT`` listener
(``sasl_bootstrap_servers``) that authenticates with SCRAM-SHA-512; the credentials are written into
the KRaft metadata when storage is formatted (``StorageTool format --add-scram``, KIP-900). The
``PLAINTEXT`` listener stays, for tools and tests that set the stage.

``LocalKafka(scram_users=..., acls=True)`` also authorises every request (``StandardAuthorizer``,
the KRaft one, ACLs kept in the metadata log): nothing is allowed without an ACL
(``allow.everyone.if.no.acl.found=false``) but to the super user ``User:ANONYMOUS``, the
principal of the unauthenticated ``PLAINTEXT`` and ``CONTROLLER`` listeners. The controller and
the broker talk to each other as that principal, so it must be a super user (KIP-801) or the node
cannot start; tests set the stage (topics, ACLs) on the ``PLAINTEXT`` listener as the platform
team would, and the SCRAM users get only what their ACLs grant.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from stream.errors import BrokerError

__all__ = [
    "KAFKA_VERSION",
    "SCRAM_MECHANISM",
    "BrokerError",
    "LocalKafka",
    "cache_dir",
    "die_with_parent",
    "fetch_jars",
]

_HERE = Path(__file__).resolve().parent
_POM = _HERE / "pom.xml"
_LOG4J2 = _HERE / "log4j2.properties"

KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)</kafka.version>", _POM.read_text())[1]  # type: ignore[index]
"""The Apache Kafka release the pom pins."""

_START_TIMEOUT_S = 90.0
"""A cold JVM on a busy 2-core machine needs ~10 s; the rest is slack for CI noise."""

_STOP_TIMEOUT_S = 30.0
"""Controlled shutdown of a single node takes a few seconds; past this the JVM is killed."""

_PR_SET_PDEATHSIG = 1

SCRAM_MECHANISM = "SCRAM-SHA-512"
"""The mechanism of the SASL listener (``scram_users``)."""

_SCRAM_FORBIDDEN = frozenset(',=[]"\n')
"""Characters ``--add-scram``'s ``[name=…,password=…]`` syntax cannot carry."""


def cache_dir() -> Path:
    """The jar cache: ``$DCR_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/dcr-stream`` (``~/.cache``)."""
    root = os.environ.get("DCR_KAFKA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dcr-stream"
    )
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def fetch_jars() -> Path:
    """Resolve the broker's jars with Maven unless they are cached; return the ``lib`` directory.

    The ``.complete`` marker is written last, so an interrupted download is redone, never half-used.
    """
    lib = cache_dir() / "lib"
    marker = lib / ".complete"
    if marker.exists() and marker.read_text() == _POM.read_text():
        return lib
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka's jars")
    shutil.rmtree(lib, ignore_errors=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(
            f"mvn could not resolve Kafka {KAFKA_VERSION}:\n{result.stdout}{result.stderr}"
        )
    marker.write_text(_POM.read_text())
    return lib


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cluster_id() -> str:
    """A KRaft cluster id: a UUID as 22 characters of URL-safe base64, as ``random-uuid`` prints.

    Like Kafka's own ``Uuid.randomUuid``, it never starts with ``-`` (one draw in 64 would), so it
    cannot read as an option wherever it is passed on a command line.
    """
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGKILL when the parent process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalKafka:
    """One broker+controller process on ``127.0.0.1``; use as a context manager or start/stop.

    ``heap_mb`` bounds the JVM heap (the distribution's scripts default to 1 GiB; a test broker
    needs far less). ``scram_users`` (name → password) adds the SCRAM-SHA-512 listener.
    """

    bootstrap_servers: str
    """``127.0.0.1:<port>`` (``PLAINTEXT``) once started."""
    sasl_bootstrap_servers: str
    """``127.0.0.1:<port>`` of the ``SASL_PLAINTEXT`` listener; empty without ``scram_users``."""

    def __init__(
        self,
        *,
        heap_mb: int = 384,
        java: str | None = None,
        scram_users: Mapping[str, str] | None = None,
        acls: bool = False,
    ) -> None:
        if acls and not scram_users:
            raise ValueError("acls=True needs scram_users: nobody else is authorised by ACLs")
        self._acls = acls
        self._heap_mb = heap_mb
        self._java = java or os.environ.get("DCR_KAFKA_JAVA") or _java_binary()
        self._scram_users = dict(scram_users or {})
        for name, password in self._scram_users.items():
            if not name or not password or _SCRAM_FORBIDDEN.intersection(name + password):
                raise ValueError(f'SCRAM user {name!r}: empty, or holds one of , = [ ] " \\n')
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        """The data directory; kept by ``stop(keep_data=True)`` for the next ``start``."""
        self.bootstrap_servers = ""
        self.sasl_bootstrap_servers = ""

    def __repr__(self) -> str:
        # Never the SCRAM passwords: a repr ends up in test reports and logs.
        state = f"running at {self.bootstrap_servers}" if self._proc else "stopped"
        users = f", scram_users={sorted(self._scram_users)}" if self._scram_users else ""
        acls = ", acls=True" if self._acls else ""
        return f"LocalKafka(version={KAFKA_VERSION!r}, {state}{users}{acls})"

    @property
    def version(self) -> str:
        """The version the running broker reports in its log (``Kafka version: …``)."""
        match = re.search(r"Kafka version: (\S+)", self.log_text())
        return match[1] if match else "unknown"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        if self._dir is None:
            return ""
        log = self._dir / "logs" / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self) -> str:
        """Format storage, start, wait until an admin client sees the broker; return its address.

        After ``stop(keep_data=True)`` the broker starts again on the same ports from the same data
        (no formatting): topics, committed offsets and SCRAM credentials are all still there.
        Call it from a thread that outlives the broker: ``PR_SET_PDEATHSIG`` fires when the
        *thread* that started the JVM ends, not only the process.
        """
        if self._proc is not None:
            raise BrokerError("the broker is already running")
        lib = fetch_jars()
        fresh = self._dir is None
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="dcr-kafka-"))
            port, controller_port = _free_port(), _free_port()
            sasl_port = _free_port() if self._scram_users else None
            (self._dir / "server.properties").write_text(
                _server_properties(
                    self._dir, port, controller_port, sasl_port=sasl_port, acls=self._acls
                )
            )
            self.bootstrap_servers = f"127.0.0.1:{port}"
            self.sasl_bootstrap_servers = f"127.0.0.1:{sasl_port}" if sasl_port else ""
        properties = self._dir / "server.properties"
        classpath = f"{lib}/*"
        jvm = [
            self._java, f"-Xms{min(128, self._heap_mb)}m", f"-Xmx{self._heap_mb}m",
            "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J2}", f"-Dkafka.logs.dir={self._dir / 'logs'}",
            "-cp", classpath,
        ]  # fmt: skip
        if fresh:
            self._format(jvm, properties)
        stdout = open(self._dir / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self._proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(properties)],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops us
            preexec_fn=die_with_parent,  # prctl must run in the child, before exec
        )
        stdout.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap_servers

    def _format(self, jvm: list[str], properties: Path) -> None:
        scram = [
            arg
            for name, password in self._scram_users.items()
            for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")
        ]
        # "--cluster-id=ID", not "-t ID": argparse4j takes a separate word that starts with "-" for
        # an option, whatever id it is given.
        fmt = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "--standalone",
             f"--cluster-id={_cluster_id()}", "-c", str(properties), *scram],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if fmt.returncode != 0:
            output = f"{fmt.stdout}{fmt.stderr}"
            for password in self._scram_users.values():
                output = output.replace(password, "********")
            self._cleanup()
            raise BrokerError(f"formatting KRaft storage failed:\n{output}")

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with {self._proc.returncode}:\n{self._tail()}"
                )
            try:
                metadata = admin.list_topics(timeout=1.0)
            except Exception:  # KafkaException while the broker boots
                continue
            if metadata.brokers:
                return
        raise BrokerError(
            f"the broker did not answer within {_START_TIMEOUT_S:.0f} s:\n{self._tail()}"
        )

    def _tail(self, lines: int = 40) -> str:
        assert self._dir is not None
        out = self._dir / "stdout.log"
        text = (out.read_text(errors="replace") if out.exists() else "") + self.log_text()
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, keep_data: bool = False) -> None:
        """SIGTERM (controlled shutdown), SIGKILL past the bound; then remove the data directory,
        unless ``keep_data``: then the next ``start`` brings the same broker back."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not keep_data:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError("no java on PATH (Kafka 4.x needs Java 17+); set JAVA_HOME")
    return found


def _server_properties(
    data: Path, port: int, controller_port: int, *, sasl_port: int | None = None, acls: bool = False
) -> str:
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    sasl = ""
    if sasl_port is not None:
        listeners += f",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
        protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        # Brokers talk to each other over PLAINTEXT (inter.broker.listener.name), so only the
        # clients' listener needs a JAAS section; the credentials live in the metadata log.
        sasl = f"""\
sasl.enabled.mechanisms={SCRAM_MECHANISM}
listener.name.sasl_plaintext.{SCRAM_MECHANISM.lower()}.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
"""
    if acls:
        # See the module's docstring: ANONYMOUS is the controller's, the broker's and the stage's.
        sasl += """\
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS
"""
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners={listeners}
advertised.listeners={listeners}
listener.security.protocol.map={protocols}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data / "data"}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
{sasl}"""
