"""EmbeddedRedis runs a real redis-server on loopback and restarts it on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.redis.embedded import EmbeddedRedis, EmbeddedRedisError, ping


def test_start_ping_stop_restart_keeps_port_and_appendonly_data(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "r", appendonly=True)
    with server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
            assert client.config_get("bind")["bind"] == "127.0.0.1"
        server.stop(keep_data=True)
        assert not ping(port)
        server.start()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v"
        assert (tmp_path / "r" / "redis.log").is_file()
    assert not server.running
    assert not ping(port)


def test_without_appendonly_nothing_is_saved(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as server, redis.Redis.from_url(server.url) as client:
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"


def test_owned_temporary_directory_is_removed_on_stop() -> None:
    server = EmbeddedRedis()
    server.start()
    data_dir = server.data_dir
    assert data_dir.is_dir()
    server.stop()
    assert not data_dir.exists()


def test_bad_arguments_raise_with_log_tail(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, extra_args=("--no-such-option", "1"))
    with pytest.raises(EmbeddedRedisError, match="no-such-option"):
        server.start()
    assert not server.running
