"""`make run` end to end: `python -m envoi.run` migrates, creates the first admin, serves the
web process and runs a worker and the scheduler; SIGINT (Ctrl-C) stops every process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import dramatiq
import psutil
import pytest
import redis
import requests
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import ROOT, free_port

START_TIMEOUT = 90
STOP_TIMEOUT = 30


class Run:
    """The run script as a child process, its output collected line by line."""

    def __init__(self, env: dict):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "envoi.run"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain
                break
            time.sleep(0.2)
        pytest.fail(f"no line with {text!r} (exit status {self.proc.poll()}); output:\n{self.output[-5000:]}")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def _kill_all(procs):
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def run(tmp_path, redis_url):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVOI_")}
    env.update(
        ENVOI_INSTANCE_PATH=str(tmp_path / "instance"),
        ENVOI_DATABASE_URL=f"sqlite:///{tmp_path / 'run.sqlite3'}",
        ENVOI_REDIS_URL=redis_url,
        ENVOI_PORT=str(port),
        ENVOI_BASE_URL=f"http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    r = Run(env)
    r.port = port
    seen: list[psutil.Process] = []
    r.seen = seen
    yield r
    # Whatever the test did, leave no process behind.
    seen.extend(r.descendants())
    if r.proc.poll() is None:
        os.killpg(r.proc.pid, signal.SIGKILL)
        r.proc.wait(5)
    _kill_all(seen)


def test_make_run_serves_works_and_stops(run, redis_url):
    banner = run.wait_for_line("Envoi is up")
    base = f"http://127.0.0.1:{run.port}"
    assert f"{base}/healthz" in banner
    password_line = run.wait_for_line("password (shown once): ", timeout=1)
    assert len(password_line.split(": ", 1)[1].strip()) >= 16
    assert "tokens create admin@localhost" in run.output

    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    spec = requests.get(f"{base}/api/v1/openapi.json", timeout=5)
    assert spec.status_code == 200 and "/api/v1/contacts" in spec.json()["paths"]
    run.wait_for_line("Registered periodic actors")  # the scheduler is up

    # A worker consumes what is sent on the Redis broker (tests otherwise use a StubBroker).
    broker = RedisBroker(url=redis_url, middleware=[])
    try:
        broker.declare_queue("default")
        message = broker.enqueue(dramatiq.Message(queue_name="default", actor_name="requeue_lost_imports",
                                                  args=(), kwargs={}, options={}))
    finally:
        broker.close()
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while client.hexists("dramatiq:default.msgs", message.message_id):
        assert time.monotonic() < deadline, f"the message was not consumed:\n{run.output[-5000:]}"
        time.sleep(0.2)
    assert not client.hexists("dramatiq:default.XQ.msgs", message.message_id), run.output[-5000:]
    assert "Failed to process message" not in run.output

    # Ctrl-C: the terminal sends SIGINT to the foreground process group.
    run.seen.extend(run.descendants())
    assert len(run.seen) >= 6, [p.name() for p in run.seen]  # honcho, gunicorn x3, dramatiq x3, periodiq
    started = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(STOP_TIMEOUT) == 0, run.output[-3000:]
    gone, alive = psutil.wait_procs(run.seen, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert time.monotonic() - started < STOP_TIMEOUT
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)

