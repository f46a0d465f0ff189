"""Signup benchmark: `python bench/bench_signup.py [--runs 3] [--requests 20000] [--duration 20]`.

gunicorn serves wsgi:app on a fresh PostgreSQL database (ENVOI_BENCH_DATABASE_URL + "_signup",
migrated) with a Redis started from the venv (broker and rate limiter; the limits are raised so
the run measures throughput, not refusals; ENVOI_SIGNUP_MIN_SECONDS=0). wrk (Debian's package,
in its own process on 127.0.0.1) posts the form with a unique address per request, bounded by a
request count and a duration. Baseline in the same run: GET /healthz with the same generator
and concurrency. Then PostgreSQL is counted: every accepted signup (gunicorn's access log: the
server's own count, which includes the few answers wrk had in flight when it stopped) is one
contact and one requested consent event. Median of the runs goes to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_campaign import tree_cpu  # noqa: E402
from bench.common import (ROOT, free_port, fresh_database, log, machine_lines, postgres_version,  # noqa: E402
                          start_redis, write_section)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/envoi_bench"
BIN = Path(sys.executable).parent
SLUG = "bench-news"
EMAIL_DOMAIN = "bench.example.org"
SITE = "https://shop.bench.example"  # the site embedding the form: browsers send its Origin on POST
BAR_RATE, BAR_P99_MS = 500, 100

# Each wrk thread numbers its own addresses (run id + thread id + counter: unique across runs),
# stops after its share of the request count, and counts statuses; done() prints one JSON line.
WRK_LUA = r"""
local threads = {}
local counter = 1
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
-- wrk has no wall clock in Lua and, after thread:stop(), still sleeps until -d runs out: each
-- thread notes when it started and stopped (one `date` call each) so the rate is over real time.
local function now_us()
  local pipe = io.popen("date +%s%6N")
  local value = tonumber(pipe:read("*l"))
  pipe:close()
  return value
end
function init(args)
  run, limit, token, mode = args[1], tonumber(args[2]), args[3], args[4]
  sent, ok, refused, failed, other = 0, 0, 0, 0, 0
  started, stopped = now_us(), 0
  if mode == "signup" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    wrk.headers["Accept"] = "application/json"
    wrk.headers["Origin"] = "__SITE__"
  end
end
function request()
  sent = sent + 1
  if mode ~= "signup" then return wrk.format() end
  local email = string.format("b%s-%d-%d@" .. "__DOMAIN__", run, id, sent)
  return wrk.format(nil, nil, nil,
    "email=" .. email:gsub("@", "%%40") .. "&first_name=Bench&_token=" .. token .. "&website=")
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then refused = refused + 1
  elseif status >= 500 then failed = failed + 1
  else other = other + 1 end
  if ok + refused + failed + other >= limit and stopped == 0 then
    stopped = now_us()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local t = {ok = 0, refused = 0, failed = 0, other = 0}
  local first, last, all_stopped = nil, 0, true
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
    local s, e = thread:get("started"), thread:get("stopped")
    if first == nil or s < first then first = s end
    if e == 0 then all_stopped = false elseif e > last then last = e end
  end
  local duration = summary.duration
  if all_stopped then duration = last - first end  -- the count bound came first
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "refused": %d, "failed": %d, "other": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, duration, t.ok, t.refused, t.failed, t.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
""".replace("__DOMAIN__", EMAIL_DOMAIN).replace("__SITE__", SITE)




def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")






def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def app_env(db_url: str, redis_url: str, instance: Path, base_url: str) -> dict:
    env = dict(os.environ, ENVOI_DATABASE_URL=db_url, ENVOI_REDIS_URL=redis_url, ENVOI_INSTANCE_PATH=str(instance),
               ENVOI_SECRET_KEY="bench-secret-key-0123456789", ENVOI_BASE_URL=base_url,
               ENVOI_SIGNUP_MIN_SECONDS="0",
               ENVOI_SIGNUP_RATE_PER_IP="1000000/minute", ENVOI_SIGNUP_RATE_PER_ADDRESS="1000/minute")
    env.pop("ENVOI_BROKER", None)
    return env


def flask(env: dict, *args: str) -> str:
    out = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"flask {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def http_json(url: str, data: dict | None = None, token: str | None = None) -> dict:
    headers = {"Accept": "application/json"}
    body = None
    if data is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(data).encode()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{url}: {err.code} {err.read()[:500]!r}") from None


def run_wrk(url: str, script: Path, *, threads: int, connections: int, duration: int, limit: int, run: str,
            token: str, mode: str) -> dict:
    per_thread = max(1, limit // threads)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s",
           "-s", str(script), url, "--", run, str(per_thread), token, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode:
        raise SystemExit(f"wrk failed:\n{out.stdout}\n{out.stderr}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def count_rows(db_url: str) -> dict:
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    like = f"%@{EMAIL_DOMAIN}"
    with engine.connect() as conn:
        counts = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM contacts WHERE email LIKE :like),"
            " (SELECT count(DISTINCT email) FROM contacts WHERE email LIKE :like),"
            " (SELECT count(*) FROM consent_events e JOIN contacts c ON c.id = e.contact_id"
            "   WHERE c.email LIKE :like AND e.kind = 'requested' AND e.channel = 'email'),"
            " (SELECT count(DISTINCT e.contact_id) FROM consent_events e JOIN contacts c ON c.id = e.contact_id"
            "   WHERE c.email LIKE :like AND e.kind = 'requested' AND e.channel = 'email')"),
            {"like": like}).one()
    engine.dispose()
    return dict(zip(["contacts", "distinct_emails", "requested_events", "contacts_with_event"], counts))


def accepted_in_log(log_path: Path, path: str) -> int:
    n = 0
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "POST" and parts[1] == path and parts[2] == "200":
                n += 1
    return n


# Where a signup's time goes: (label, file suffix, function) of cumulative cProfile times.
PROFILE_PARTS = [
    ("whole request: the signup fast path in front of Flask (no HTTP server)", "optin/views.py", "_answer"),
    ("reading the request (werkzeug: the NUL check parses the form)", "envoi/errors.py", "nul_fields"),
    ("Flask's request machinery (0: the fast path answers these signups)", "flask/app.py", "wsgi_app"),
    ("form (per-process cache)", "optin/services.py", "signup_form"),
    ("signup validation (clean_signup)", "optin/services.py", "clean_signup"),
    ("rate limits per IP and per address + forms' version (one Redis script)", "optin/ratelimit.py", "hit"),
    ("new signup: INSERT contact + consent event + action, COMMIT, enqueue (_insert_new_signup)",
     "optin/services.py", "_insert_new_signup"),
    ("the INSERT ... CTE statement (autocommit: one round trip)", "sqlalchemy/engine/base.py", "execute"),
    ("confirmation queued once committed (Dramatiq on Redis)", "dramatiq/actor.py", "send"),
    ("session COMMIT (0 on this path: nothing in the session)", "sqlalchemy/orm/scoping.py", "commit"),
    ("existing contact path (_store_signup; 0 when every address is new)", "optin/services.py", "_store_signup"),
    ("answer (_signup_done)", "optin/views.py", "_signup_done"),
    ("waiting on PostgreSQL (psycopg wait)", "psycopg/connection.py", "wait"),
]


def profile_child(count: int) -> None:
    """In the app's environment: `count` signups through the Flask test client under cProfile,
    printed as JSON (ms per signup per part, SQL statements per signup)."""
    import cProfile
    import pstats

    from sqlalchemy import event

    from envoi import create_app
    from envoi.extensions import db

    app = create_app()
    client = app.test_client()
    with app.app_context():
        engine = db.engine
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(1))
    token = client.get(f"/forms/{SLUG}", headers={"Accept": "application/json"}).get_json()["token"]
    headers = {"Accept": "application/json", "Origin": SITE}

    def signup(i):
        # Another domain: these rows are not part of the stored-once count.
        body = f"email=prof-{time.time_ns()}-{i}%40profile.example.org&first_name=Bench&_token={token}&website="
        resp = client.post(f"/forms/{SLUG}", data=body, content_type="application/x-www-form-urlencoded",
                           headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)

    for i in range(20):  # warm-up
        signup(i)
    statements.clear()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for i in range(count):
        signup(i)
    profiler.disable()
    wall = time.perf_counter() - start
    summary = pstats.Stats(profiler)
    stats = summary.stats
    parts, parts_last = {}, None
    for label, suffix, func in PROFILE_PARTS:
        cum = sum(v[3] for (fname, _, name), v in stats.items() if fname.endswith(suffix) and name == func)
        key = label or parts_last
        parts[key] = parts.get(key, 0) + cum * 1000 / count
        parts_last = key
    print(json.dumps({"count": count, "wall_ms": wall * 1000 / count, "statements": len(statements) / count,
                      "calls": summary.total_calls / count, "parts": parts}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("ENVOI_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=15_000, help="upper bound of signups per run")
    parser.add_argument("--duration", type=int, default=20, help="upper bound of a run, seconds")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (concurrency)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (make run: one per core, 2 to 4)")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--profile", type=int, default=300, help="signups profiled in-process (0: none)")
    parser.add_argument("--profile-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_child:
        return profile_child(args.profile_child)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: `make bench` installs it (apt-get install wrk)")
    base = args.database_url
    if "+psycopg" not in base:
        base = base.replace("postgresql://", "postgresql+psycopg://", 1)
    db_url = base + "_signup"  # own database: other bench scripts use the base one

    work = Path(tempfile.mkdtemp(prefix="envoi-bench-signup-"))
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    access_log = work / "access.log"
    log(f"fresh database {db_url.rsplit('/', 1)[-1]}, Redis from the venv")
    fresh_database(db_url)
    redis_proc, redis_url = start_redis(work)
    env = app_env(db_url, redis_url, work, origin)
    gunicorn = None
    try:
        flask(env, "db", "upgrade")
        flask(env, "users", "create", "bench@example.org", "--role", "admin", "--password", "correct horse battery")
        api_token = flask(env, "tokens", "create", "bench@example.org", "--name", "bench").strip().splitlines()[-1]
        gunicorn_cmd = [str(BIN / "gunicorn"), "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers",
                        str(args.workers), "--worker-class", args.worker_class, "--threads", str(args.worker_threads),
                        "--no-control-socket", "--access-logfile", str(access_log),
                        "--access-logformat", "%(m)s %(U)s %(s)s", "--log-level", "warning", "--backlog", "2048"]
        gunicorn = subprocess.Popen(gunicorn_cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        wait_http(origin + "/healthz", 30, gunicorn)
        http_json(origin + "/api/v1/forms", {
            "slug": SLUG, "title": "Bench news", "fields": ["email", "first_name"], "channels": ["email"],
            "double_opt_in": True, "consent_text": "I agree to receive the bench newsletter.",
            "allowed_origins": [SITE], "popup": {"trigger": "inline"}}, token=api_token)
        form_token = http_json(origin + f"/forms/{SLUG}")["token"]

        script = work / "signup.lua"
        script.write_text(WRK_LUA, encoding="utf-8")
        common = dict(threads=args.threads, connections=args.connections, duration=args.duration, token=form_token)
        # Warm-up: every worker imports, connects to PostgreSQL and Redis.
        run_wrk(origin + "/healthz", script, limit=2000, run="w", mode="health", **common)
        warmup = run_wrk(origin + f"/forms/{SLUG}", script, limit=400, run="w", mode="signup", **common)

        results = []
        for i in range(args.runs):
            cpu0 = tree_cpu(gunicorn.pid)
            health = run_wrk(origin + "/healthz", script, limit=args.requests, run=f"h{i}", mode="health", **common)
            cpu1 = tree_cpu(gunicorn.pid)
            signup = run_wrk(origin + f"/forms/{SLUG}", script, limit=args.requests, run=str(i), mode="signup",
                             **common)
            time.sleep(0.2)  # the last answers in flight
            health["cpu_ms"] = (cpu1 - cpu0) * 1000 / max(1, health["requests"])
            signup["cpu_ms"] = (tree_cpu(gunicorn.pid) - cpu1) * 1000 / max(1, signup["requests"])
            log(f"run {i + 1}: signup {signup['rate']:.0f}/s p50 {signup['p50_us'] / 1000:.1f} ms "
                f"p99 {signup['p99_us'] / 1000:.1f} ms ok {signup['ok']} errors "
                f"{signup['failed'] + signup['other'] + signup['refused'] + signup['socket_errors']}; "
                f"healthz {health['rate']:.0f}/s p99 {health['p99_us'] / 1000:.1f} ms; gunicorn CPU per request: signup "
                f"{signup['cpu_ms']:.2f} ms, healthz {health['cpu_ms']:.2f} ms")
            results.append((signup, health))
        time.sleep(1)  # let the answers wrk had in flight when it stopped reach the access log
        stop(gunicorn)
        profile = None
        if args.profile:
            log(f"profiling {args.profile} signups in-process (cProfile) ...")
            prof = subprocess.run([sys.executable, __file__, "--profile-child", str(args.profile)], cwd=ROOT,
                                  capture_output=True, text=True, env=env)
            if prof.returncode:
                raise SystemExit(f"profile failed:\n{prof.stderr[-3000:]}")
            profile = json.loads(prof.stdout.strip().splitlines()[-1])
    finally:
        if gunicorn is not None:
            stop(gunicorn)
        stop(redis_proc)

    accepted = accepted_in_log(access_log, f"/forms/{SLUG}")
    rows = count_rows(db_url)
    seen_ok = warmup["ok"] + sum(s["ok"] for s, _ in results)
    stored_once = 0 < seen_ok <= accepted and (rows["contacts"] == rows["distinct_emails"] == rows["requested_events"]
                   == rows["contacts_with_event"] == accepted)
    med = lambda key, which=0: statistics.median(r[which][key] for r in results)  # noqa: E731
    rate, p50, p99 = med("rate"), med("p50_us") / 1000, med("p99_us") / 1000
    h_rate, h_p50, h_p99 = med("rate", 1), med("p50_us", 1) / 1000, med("p99_us", 1) / 1000
    errors = sum(s["failed"] + s["other"] + s["refused"] + s["socket_errors"] for s, _ in results)
    met = rate >= BAR_RATE and p99 < BAR_P99_MS

    def row(n, s, h):
        return (f"| {n} | {s['requests']:,} in {s['duration_us'] / 1e6:.1f} s | **{s['rate']:,.0f}** | "
                f"{s['p50_us'] / 1000:.1f} ms | {s['p99_us'] / 1000:.1f} ms | "
                f"{s['failed'] + s['other'] + s['refused'] + s['socket_errors']} | "
                f"{h['rate']:,.0f} | {h['p99_us'] / 1000:.1f} ms | {s['rate'] / h['rate']:.2f} | {s['cpu_ms']:.2f} ms | "
                f"{h['cpu_ms']:.2f} ms |")

    lines = [
        "## Signups: POST /forms/<slug> on gunicorn + PostgreSQL",
        "",
        *machine_lines([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        f"- PostgreSQL {postgres_version(db_url)} and the venv's Redis (broker + rate limiter) on the same machine; "
        f"`gunicorn wsgi:app --workers {args.workers} --worker-class {args.worker_class} --threads "
        f"{args.worker_threads}`; ENVOI_SIGNUP_MIN_SECONDS=0, rate limits raised so nothing is refused",
        f"- load: `wrk -t{args.threads} -c{args.connections}` (Debian's wrk, own process, loopback), a Lua script "
        f"posting, as the embed script does from an allowed site (`Origin` header), `email` (unique per request) + `first_name` + `_token` + empty honeypot, form-encoded, "
        f"`Accept: application/json`; each run bounded by {args.requests:,} requests and {args.duration} s; "
        f"baseline `GET /healthz` (one `SELECT 1`) with the same generator and concurrency, just before each run",
        "- every signup does the real work (answered in front of Flask by optin/views.py SignupFastPath, through "
        "the route's own code): origin check, token check, honeypot, min fill time, the per-IP and "
        "per-address rate limits (one Redis script), one transaction (contact + requested consent event + signup "
        "action: one INSERT ... CTE statement), the confirmation message queued on Redis after commit",
        "",
        "| run | signups | signups/s | p50 | p99 | errors | healthz/s | healthz p99 | ratio | CPU / signup | CPU / healthz |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(row(i + 1, s, h) for i, (s, h) in enumerate(results)),
        f"| **median** | | **{rate:,.0f}** | {p50:.1f} ms | **{p99:.1f} ms** | {errors} | {h_rate:,.0f} | "
        f"{h_p99:.1f} ms | **{rate / h_rate:.2f}** | **{med('cpu_ms'):.2f} ms** | {med('cpu_ms', 1):.2f} ms |",
        "",
        "CPU / signup and CPU / healthz: CPU time (user + system) of gunicorn's processes during the run divided by "
        "the requests answered (PostgreSQL, Redis and wrk not included): less sensitive to the machine's load than "
        "the rates, though a busy machine still inflates it.",
        "",
        f"Bar: >= {BAR_RATE} signups/s with p99 < {BAR_P99_MS} ms: **{'met' if met else 'missed'}** "
        f"(median {rate:,.0f}/s, p99 {p99:.1f} ms; healthz p50 {h_p50:.1f} ms, signup p50 {p50:.1f} ms).",
        "",
        f"Stored once: gunicorn logged {accepted:,} accepted signups, warm-up included (wrk read {seen_ok:,} of those answers; the rest "
        f"were in flight when it stopped); PostgreSQL holds {rows['contacts']:,} bench contacts "
        f"({rows['distinct_emails']:,} distinct addresses) and {rows['requested_events']:,} requested consent events "
        f"on {rows['contacts_with_event']:,} contacts: **{'every accepted signup stored exactly once' if stored_once else 'MISMATCH'}**.",
    ]
    lines += [] if profile is None else [
        "",
        f"Where a signup's time goes: {profile['count']} signups through the Flask test client (no HTTP server, "
        f"no concurrency) under cProfile, same database and Redis: {profile['wall_ms']:.1f} ms each (cProfile adds "
        f"overhead), {profile['statements']:.1f} SQL statements and {profile['calls']:,.0f} Python function calls each (a count "
        f"that does not depend on the machine's load). Cumulative ms per signup (parts overlap: "
        f"a part includes the ones it calls):",
        "",
        "| part | ms / signup |",
        "|---|---:|",
        *(f"| {label} | {ms:.2f} |" for label, ms in profile["parts"].items()),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("signup", body)
        print("\nwritten to BENCHMARKS.md")
    shutil.rmtree(work, ignore_errors=True)
    if not stored_once:
        raise SystemExit("signup bench: stored rows do not match accepted signups")


if __name__ == "__main__":
    main()
