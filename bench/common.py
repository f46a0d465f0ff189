"""Helpers shared by the benchmarks: machine description, process-tree sampling, BENCHMARKS.md sections."""
from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures written by the scripts in `bench/` (`make bench`); each section is replaced by its script.\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def postgres_version(url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()


def machine_lines(command: list[str] | None = None) -> list[str]:
    """Markdown bullet lines describing where and how a benchmark ran."""
    command = command or sys.argv
    return [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {ram_gb():.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"(the machine is shared; other jobs running at the same time slow every figure)",
        f"- command: `{' '.join(shlex.quote(c) for c in command)}`",
        f"- commit: {git_commit()}",
    ]


class TreeSampler:
    """Samples the summed RSS of a process and its children until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run a command; return (wall seconds, peak RSS bytes of its process tree, output). Fails loudly."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeSampler(proc.pid) as sampler:
        out, _ = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, sampler.peak, out


def write_section(name: str, body: str) -> None:
    """Replace the `<!-- bench:NAME -->` section of BENCHMARKS.md (other sections stay)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text, encoding="utf-8")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def reset_and_migrate(url: str) -> None:
    """Drop and recreate the public schema, then `flask db upgrade` in a subprocess, as in production."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url)


def upgrade(url: str) -> None:
    """`flask db upgrade` in a subprocess, as in production (a no-op when the schema is current)."""
    env = {**os.environ, "ENVOI_DATABASE_URL": url, "ENVOI_BROKER": "stub"}
    flask = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    out = subprocess.run(flask, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"flask db upgrade failed:\n{out.stdout}\n{out.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    from envoi.run import redis_answers, redis_binary

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("could not start the venv's redis-server")
        time.sleep(0.1)
    return proc, url


def run_fill_steps(conn, steps, timings: dict) -> None:
    """Run (name, sql, params) fill steps on `conn`, logging and recording each one's seconds.
    The "indexes" step is a `;`-joined list of CREATE INDEX statements, run one by one."""
    import sqlalchemy as sa

    for name, sql, params in steps:
        start = time.perf_counter()
        for statement in filter(None, sql.split(";")) if name == "indexes" else [sql]:
            conn.execute(sa.text(statement), params)
        timings[name] = time.perf_counter() - start
        log(f"{name}: {timings[name]:.1f} s")


def timed(fn, runs: int) -> tuple[list[float], object]:
    """Milliseconds of `runs` calls of fn after one warm-up call (caches, plans), and the last result."""
    fn()
    values, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        values.append((time.perf_counter() - start) * 1000)
    return values, result
