"""stack.services: real Redis on loopback with a generated password (fast); the S3 signer."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from stack import services

def test_redis_with_generated_password_starts_and_stops(tmp_path):
    import redis

    svc = services.start_redis(tmp_path)
    try:
        assert svc.port and svc.alive()
        client = redis.Redis.from_url(svc.env["MLOPS_REDIS_URL"])
        assert client.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=svc.port).ping()
        assert svc.env["FEAST_REDIS_CONNECTION"].startswith(f"127.0.0.1:{svc.port},password=r")
        creds = tmp_path / "redis" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "redis" / "redis.conf").stat().st_mode) == 0o600
        # saved as JSON and stopped from "another process": only the dataclass fields are needed
        again = services.Service(**dataclasses.asdict(svc))
    finally:
        svc.stop(timeout=5)
    assert not again.alive()
    again.stop(timeout=1)  # stopping twice is harmless


def test_free_ports_and_names():
    ports = {services.free_port() for _ in range(5)}
    assert all(1024 < p < 65536 for p in ports)
    with pytest.raises(ValueError):
        services.create_bucket({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, "Bad_Name")
    with pytest.raises(ValueError):
        services.create_database(services.Service("postgres", 0, 0, {}, ""), "x; DROP")
