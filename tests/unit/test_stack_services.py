"""stack.process and stack.services: real Redis on loopback with a generated password (fast);
process groups stopped at once; names checked before they reach SQL or S3."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from stack import process, services


def test_redis_with_generated_password_starts_and_stops(tmp_path):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    svc = services.start_redis(tmp_path)
    try:
        assert svc.port and svc.alive()
        client = redis.Redis.from_url(svc.env["MLOPS_REDIS_URL"])
        assert client.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            # no retries: redis-py retries a refused AUTH with backoff (~10 s) by default
            redis.Redis(host="127.0.0.1", port=svc.port,
                        retry=Retry(NoBackoff(), 0)).ping()
        assert svc.env["FEAST_REDIS_CONNECTION"].startswith(f"127.0.0.1:{svc.port},password=r")
        creds = tmp_path / "redis" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "redis" / "redis.conf").stat().st_mode) == 0o600
        # saved as JSON and stopped from "another process": only the dataclass fields are needed
        again = process.Service(**dataclasses.asdict(svc))
    finally:
        svc.stop(timeout=5)
    assert not again.alive()
    again.stop(timeout=1)  # stopping twice is harmless


def test_free_ports_and_names():
    ports = {process.free_port() for _ in range(5)}
    assert all(1024 < p < 65536 for p in ports)
    with pytest.raises(ValueError):
        services.create_bucket({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, "Bad_Name")
    with pytest.raises(ValueError):
        services.create_database(process.Service("postgres", 0, 0, {}, ""), "x; DROP")
    with pytest.raises(ValueError):  # a database is never used through the superuser
        services.create_database(process.Service("postgres", 0, 0, {}, ""), "x", owner="postgres")


def test_free_port_never_hands_out_the_same_port_twice():
    ports = [process.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_stop_all_stops_at_once_and_kills_what_ignores_the_signal(tmp_path):
    import time

    stubborn = []
    for i in range(3):
        log = tmp_path / f"s{i}.log"
        proc = process.spawn(f"s{i}", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                               log, cwd=tmp_path)
        svc = process.Service(name=f"s{i}", pid=proc.pid, port=0, env={}, log=str(log))
        svc._proc = proc
        stubborn.append(svc)
    t0 = time.monotonic()
    process.stop_all(stubborn, timeout=1.0)
    took = time.monotonic() - t0
    assert not any(s.alive() for s in stubborn)
    assert took < 2.5, took  # one timeout (plus the SIGKILL), not three


def test_an_exited_but_unreaped_server_is_not_alive():
    import subprocess
    import time

    proc = subprocess.Popen(["true"])  # not waited for: a zombie once it exits
    deadline = time.monotonic() + 5
    while process._is_zombie(proc.pid) is False and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process._is_zombie(proc.pid)
    assert not process.Service("x", proc.pid, 0, {}, "").alive()
    proc.wait()


def test_in_parallel_waits_for_every_call_then_raises_the_failure():
    import threading
    import time

    done = threading.Event()

    def slow():
        time.sleep(0.3)
        done.set()
        return 1

    def fail():
        raise RuntimeError("boom")

    assert process.in_parallel(lambda: 1, lambda: 2) == [1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        process.in_parallel(fail, slow)
    assert done.is_set()
