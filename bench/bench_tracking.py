"""Tracking and analytics on PostgreSQL at scale: 1,000,000 contacts, 5,000,000 purchases, 10,000,000 message events.

    python -m bench.bench_tracking [--url postgresql+psycopg://postgres@127.0.0.1/envoi_bench_tracking]
                                   [--scale 1.0] [--campaigns 10] [--runs 7] [--duration 10] [--reuse]

The database is reset, migrated with `flask db upgrade` (a subprocess, as in production) and filled
with set-based SQL (INSERT ... SELECT generate_series, random()): contacts, skewed purchases (and the
contacts' purchase aggregates), `--campaigns` email campaigns each sent to half of the contacts (the
deliveries), and message events on those deliveries: one `sent` each, then opens (15 % of them bot
prefetches), clicks on 20 links, unsubscribes, until the events number 10 x the contacts.
Secondary indexes are dropped during the load and rebuilt after (the migrations' own definitions).

Timed in-process (median and p95 of `--runs`, after one warm-up): the campaign report of the
latest campaign (campaigns/reports.py: counts, unique human opens and clicks, conversions by
last-touch attribution, timeline, top links) and the portfolio report (contacts/kpis.py: RFM
grid, ABC/Pareto, small customers with potential); bar: each under 1 s.
Then gunicorn serves wsgi:app and wrk hits /healthz (the baseline), the open pixel, a click redirect
and an SMS short link (`--duration` seconds each); bar: 2,000 requests/s. After each, the buffered
hits are drained and the events written counted, to check every hit was recorded.
Results go to BENCHMARKS.md (section "tracking").
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from statistics import median

import sqlalchemy as sa

from bench.common import (free_port, log, machine_lines, percentile, postgres_version, reset_and_migrate,
                          run_fill_steps, start_redis, timed, write_section)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/envoi_bench_tracking"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-0123456789"

CONTACTS_SQL = """
INSERT INTO contacts (email, first_name, city, country, lifecycle, tags, attributes, email_status, sms_status,
                      created_at, updated_at, purchase_count, purchase_total, tracking_refused)
SELECT 'c' || g || '@example.org', 'First' || (g % 5000),
       (ARRAY['Paris', 'Lyon', 'Marseille', 'Lille', 'Nantes', 'Bordeaux'])[1 + (g % 6)], 'FR', 'prospect',
       '[]'::jsonb, '{}'::jsonb,
       (ARRAY['confirmed', 'confirmed', 'confirmed', 'confirmed', 'unsubscribed', 'bounced'])
           [1 + floor(random() * 6)::int],
       'none', now() - random() * interval '1500 days', now() - random() * interval '700 days', 0, 0, false
FROM generate_series(1, :n) AS g
"""
# Skewed: a few contacts buy a lot, about a third never buy. Written in time order, as purchases
# arrive: the rows of a week are near each other on disk, as in a real table.
PURCHASES_SQL = """
INSERT INTO purchases (contact_id, sku, category, quantity, amount, currency, occurred_at, store, created_at)
SELECT * FROM (
    SELECT 1 + floor(power(random(), 1.6) * :contacts * 0.7)::bigint, 'SKU-' || floor(random() * 2000)::int,
           (ARRAY['shoes', 'shirts', 'bags', 'hats', 'books'])[1 + floor(random() * 5)::int], 1,
           round((5 + random() * 295)::numeric, 2), 'EUR', now() - random() * interval '1100 days' AS at, 'web', now()
    FROM generate_series(1, :n)) p
ORDER BY at
"""
AGGREGATES_SQL = """
UPDATE contacts c
SET purchase_count = s.n, purchase_total = s.total, first_purchase_at = s.first, last_purchase_at = s.last,
    lifecycle = 'customer'
FROM (SELECT contact_id, count(*) AS n, sum(amount) AS total, min(occurred_at) AS first, max(occurred_at) AS last
      FROM purchases GROUP BY contact_id) s
WHERE c.id = s.contact_id
"""
# Campaign k started k weeks before the latest one; the latest is a week old.
CAMPAIGNS_SQL = """
INSERT INTO campaigns (name, channel, exclude_segment_ids, subject, html, status, send_at, started_at, finished_at,
                       targeted, track, created_at, updated_at)
SELECT 'Bench ' || k, 'email', '[]'::jsonb, 'Hello', '<p>Hello</p>', 'sent',
       now() - ((:k - k + 1) * interval '7 days'), now() - ((:k - k + 1) * interval '7 days'),
       now() - ((:k - k + 1) * interval '7 days') + interval '2 hours', :half, true, now(), now()
FROM generate_series(1, :k) AS k
"""
# Each campaign to half of the contacts (odd or even ids), sent over its first two hours.
DELIVERIES_SQL = """
INSERT INTO deliveries (campaign_id, contact_id, channel, status, attempts, sent_at, updated_at, reclaims)
SELECT k.id, c.g, 'email', CASE WHEN random() < 0.01 THEN 'bounced' ELSE 'sent' END, 1,
       k.started_at + random() * interval '2 hours', now(), 0
FROM campaigns k CROSS JOIN LATERAL generate_series(1 + (k.id % 2)::int, :n, 2) AS c(g)
ORDER BY k.id, c.g
"""
# Event g belongs to delivery 1 + (g - 1) % D: the first D are the `sent` events, then opens, clicks, unsubscribes.
EVENTS_SQL = """
INSERT INTO message_events (contact_id, campaign_id, channel, kind, occurred_at, is_bot, data)
SELECT d.contact_id, d.campaign_id, 'email', e.kind,
       CASE WHEN e.kind = 'sent' THEN d.sent_at ELSE d.sent_at + power(random(), 3) * interval '10 days' END,
       e.kind = 'opened' AND random() < 0.15,
       CASE WHEN e.kind = 'clicked' THEN jsonb_build_object('url', 'https://shop.example.com/p/' || (e.g % 20))
            ELSE '{}'::jsonb END
FROM (SELECT g, 1 + (g - 1) % :d AS delivery_id,
             CASE WHEN g <= :d THEN 'sent' WHEN random() < 0.62 THEN 'opened' WHEN random() < 0.93 THEN 'clicked'
                  ELSE 'unsubscribed' END AS kind
      FROM generate_series(1, :e) AS g) e
JOIN deliveries d ON d.id = e.delivery_id
"""


def fill(url: str, contacts: int, purchases: int, events: int, campaigns: int) -> dict[str, float]:
    timings = {}
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    tables = ("contacts", "purchases", "deliveries", "message_events", "campaigns")
    with engine.connect() as conn:
        conn.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        conn.execute(sa.text("SET session_replication_role = replica"))
        indexes = conn.execute(sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = ANY(:t) AND i.schemaname = 'public' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"), {"t": list(tables)}).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        deliveries = campaigns * (contacts // 2)
        steps = (("contacts", CONTACTS_SQL, {"n": contacts}),
                 ("purchases", PURCHASES_SQL, {"n": purchases, "contacts": contacts}),
                 ("aggregates", AGGREGATES_SQL, {}),
                 ("campaigns", CAMPAIGNS_SQL, {"k": campaigns, "half": contacts // 2}),
                 ("deliveries", DELIVERIES_SQL, {"n": contacts}),
                 ("events", EVENTS_SQL, {"d": deliveries, "e": max(events, deliveries)}),
                 ("indexes", ";".join(d for _, d in indexes), {}),
                 ("vacuum analyze", "VACUUM ANALYZE", {}))
        run_fill_steps(conn, steps, timings)
        conn.execute(sa.text("SET session_replication_role = DEFAULT"))
        # The load ran without triggers: the report's rollups are computed as migration 0012 does.
        from campaigns.reports import rebuild_rollups

        start = time.perf_counter()
        conn.execute(sa.text("SET work_mem = '256MB'"))
        rebuild_rollups(conn)
        conn.execute(sa.text("VACUUM ANALYZE"))
        timings["report rollups"] = time.perf_counter() - start
        log(f"report rollups: {timings['report rollups']:.1f} s")
    engine.dispose()
    return timings


def run_wrk(url: str, *, threads: int, connections: int, duration: int) -> dict:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s", "--latency",
           url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode:
        raise SystemExit(f"wrk failed:\n{out.stdout}\n{out.stderr}")
    text = out.stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)

    def latency(q):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", text)
        if not m:
            return None
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"requests": requests, "rate": rate, "bad": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else None, "p50": latency(50), "p99": latency(99)}


def serve_and_hit(args, url: str, campaign_id: int) -> dict:
    """gunicorn + wrk on /healthz (the baseline, same server), the pixel, a click redirect and an SMS short
    link; after each, the buffered hits are drained and the events written are counted."""
    from bench.bench_signup import app_env, stop, wait_http

    work = Path(tempfile.mkdtemp(prefix="envoi-bench-tracking-"))
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    redis_proc, redis_url = start_redis(work)
    env = app_env(url, redis_url, work, origin)
    env["ENVOI_SECRET_KEY"] = SECRET
    gunicorn = None
    try:
        from envoi import create_app
        from envoi.extensions import db

        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SQLALCHEMY_ENGINE_OPTIONS": {}, "SECRET_KEY": SECRET,
                          "BASE_URL": origin, "REDIS_URL": redis_url})
        with app.app_context():
            from campaigns import tracking
            from campaigns.models import ShortLink
            from envoi.types import utcnow

            sent = utcnow() - timedelta(hours=1)
            pixel = tracking.open_token(campaign_id, 2, now=sent)
            click = tracking.click_token(campaign_id, 2, "https://shop.example.com/p/1", now=sent)
            from campaigns.tracking_models import SmsLink

            sms_url = "https://shop.example.com/sms"
            old_code = tracking.short_code(campaign_id, 2, sms_url)   # the first form: one read a hit
            code = tracking.sms_code(campaign_id, 2, 0, sms_url)      # the second: none
            db.session.execute(sa.delete(ShortLink).where(ShortLink.code.in_((code, old_code))))
            db.session.execute(sa.delete(SmsLink).where(SmsLink.campaign_id == campaign_id))
            db.session.add(SmsLink(campaign_id=campaign_id, position=0, url_hash="bench", url=sms_url))
            for c in (code, old_code):
                db.session.add(ShortLink(code=c, campaign_id=campaign_id, contact_id=2, url=sms_url, created_at=sent))
            db.session.commit()
        cmd = [str(BIN / "gunicorn"), "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
               "--worker-class", "gthread", "--threads", str(args.worker_threads), "--no-control-socket",
               "--log-level", "warning", "--backlog", "2048", "--keep-alive", str(args.keep_alive)]
        gunicorn = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        wait_http(origin + "/healthz", 30, gunicorn)
        common = dict(threads=args.threads, connections=args.connections)
        run_wrk(origin + f"/t/o/{pixel}.gif", duration=2, **common)  # warm-up: every worker connects

        def drain_and_count(kinds=("opened", "clicked")) -> tuple[int, float]:
            with app.app_context():
                start = time.perf_counter()
                tracking.drain_hits()
                seconds = time.perf_counter() - start
                n = db.session.scalar(sa.text("SELECT count(*) FROM message_events WHERE campaign_id = :c "
                                              "AND kind IN ('opened', 'clicked')"), {"c": campaign_id})
                db.session.remove()
                return n, seconds

        results = {}
        drain_and_count()
        for name, path in (("/healthz (baseline: SELECT 1 through Flask and the session)", "/healthz"),
                           ("open pixel", f"/t/o/{pixel}.gif"), ("click redirect", f"/t/c/{click}"),
                           ("SMS short link", f"/s/{code}"),
                           ("SMS short link, first form (codes sent before 0012)", f"/s/{old_code}")):
            before, _ = drain_and_count()
            result = run_wrk(origin + path, duration=args.duration, **common)
            time.sleep(0.5)
            after, seconds = drain_and_count()
            result["recorded"], result["drain_seconds"] = after - before, seconds
            results[name] = result
            log(f"{name}: {result['rate']:.0f} req/s, {result['requests']} requests, {result['recorded']} events "
                f"(drained in {seconds:.2f} s), {result['bad']} non-2xx/3xx, p50 {result['p50']} ms, "
                f"p99 {result['p99']} ms")
        return results
    finally:
        if gunicorn is not None:
            stop(gunicorn)
        stop(redis_proc)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    base = os.environ.get("ENVOI_BENCH_DATABASE_URL")  # `make bench`: ours is that database + "_tracking"
    parser.add_argument("--url", default=os.environ.get("ENVOI_BENCH_TRACKING_URL")
                        or (base.rstrip("/") + "_tracking" if base else DEFAULT_URL),
                        help="its own database (dropped and recreated): other bench scripts use theirs")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0: 1M contacts, 5M purchases, 10M events")
    parser.add_argument("--campaigns", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per endpoint")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    # 2 cores: two processes of eight threads each measured best (a hit mostly waits on Redis or PostgreSQL).
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--keep-alive", type=int, default=5, help="gunicorn keep-alive seconds")
    parser.add_argument("--reuse", action="store_true", help="keep the data of a previous run")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: `make bench` installs it (apt-get install wrk)")
    url = args.url if "+psycopg" in args.url else args.url.replace("postgresql://", "postgresql+psycopg://", 1)
    n = max(1000, int(1_000_000 * args.scale))
    sizes = {"contacts": n, "purchases": 5 * n, "events": 10 * n}

    fill_times: dict[str, float] = {}
    if not args.reuse:
        from bench.common import fresh_database

        log(f"fresh database {url.rsplit('/', 1)[-1]} + flask db upgrade")
        fresh_database(url)
        reset_and_migrate(url)
        fill_times = fill(url, sizes["contacts"], sizes["purchases"], sizes["events"], args.campaigns)

    os.environ["ENVOI_BROKER"] = "stub"
    from envoi import create_app
    from envoi.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SQLALCHEMY_ENGINE_OPTIONS": {}})
    with app.app_context():
        from campaigns.reports import campaign_report
        from contacts.kpis import lookalikes, portfolio_report

        session = db.session
        counts = {t: session.scalar(sa.text(f"SELECT count(*) FROM {t}"))
                  for t in ("contacts", "purchases", "campaigns", "deliveries", "message_events")}
        campaign_id = session.scalar(sa.text("SELECT max(id) FROM campaigns"))
        log(f"rows: {counts}")
        report_values, report = timed(lambda: campaign_report(campaign_id), args.runs)
        session.rollback()
        log(f"campaign report: median {median(report_values):.0f} ms, p95 {percentile(report_values, 0.95):.0f} ms; "
            f"delivered {report['delivered']}, unique opens {report['unique_opens']}, "
            f"conversions {report['conversions']}")
        portfolio_values, portfolio = timed(portfolio_report, args.runs)
        session.rollback()
        log(f"portfolio report: median {median(portfolio_values):.0f} ms, "
            f"p95 {percentile(portfolio_values, 0.95):.0f} ms")
        look = timed(lookalikes, args.runs)
        session.rollback()
        log(f"lookalikes: median {median(look[0]):.0f} ms, p95 {percentile(look[0], 0.95):.0f} ms")
    http = serve_and_hit(args, url, campaign_id)
    body = render(args, url, counts, fill_times, report_values, report, portfolio_values, portfolio, http, look)
    print(body)
    if not args.no_write:
        write_section("tracking", body)
        log("BENCHMARKS.md updated")


def render(args, url, counts, fill_times, report_values, report, portfolio_values, portfolio, http, look) -> str:
    def ms(values):
        return f"{median(values):.0f} ms | {percentile(values, 0.95):.0f} ms"

    def verdict(ok):
        return "yes" if ok else "**no**"

    lines = [
        "## Tracking and analytics (`python -m bench.bench_tracking`)", "",
        *machine_lines(), f"- PostgreSQL {postgres_version(url)}",
        f"- scale {args.scale}: {counts['contacts']:,} contacts, {counts['purchases']:,} purchases, "
        f"{counts['campaigns']} campaigns, {counts['deliveries']:,} deliveries, {counts['message_events']:,} "
        "message events (the bars are set for scale 1.0)",
    ]
    if fill_times:
        lines.append("- load (SQL generate_series): " + ", ".join(f"{k} {v:.1f} s" for k, v in fill_times.items()))
    lines += [
        "", f"Reports, in-process, {args.runs} runs after a warm-up:", "",
        "| report | median | p95 | under 1 s |", "|---|---|---|---|",
        f"| campaign report (latest campaign: {report['delivered']:,} delivered, {report['unique_opens']:,} "
        f"unique human opens, {report['unique_clicks']:,} unique clicks, {report['conversions']:,} conversions) "
        f"| {ms(report_values)} | {verdict(percentile(report_values, 0.95) < 1000)} |",
        f"| portfolio report (RFM grid over {portfolio['rfm']['customers']:,} customers, ABC/Pareto: "
        f"{portfolio['pareto']['customers_for_80_percent']:,} make 80 % of revenue, "
        f"{portfolio['small_with_potential']['customers']:,} small customers with potential) "
        f"| {ms(portfolio_values)} | {verdict(percentile(portfolio_values, 0.95) < 1000)} |",
        f"| lookalikes of the big customers (`/analytics/lookalikes`, not part of the portfolio report: "
        f"{look[1]['big_customers']:,} big customers, {len(look[1]['profile'])} profile fields, "
        f"{look[1]['customers']:,} lookalikes; the generated contacts have no sector, age or source, and cities "
        f"spread evenly, so no profile) | {ms(look[0])} | (no bar) |",
        "", f"Tracking endpoints: gunicorn ({args.workers} workers x {args.worker_threads} threads, gthread, "
        f"keep-alive {args.keep_alive} s), wrk {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s each; the baseline on the same server in the same run:", "",
        "| endpoint | requests/s | x baseline | requests | events recorded (after the drain) | drain | non-2xx/3xx "
        "| p50 | p99 | 2,000/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = next(r["rate"] for name, r in http.items() if name.startswith("/healthz"))
    for name, r in http.items():
        base = name.startswith("/healthz")
        bar = "" if base else verdict(r["rate"] >= 2000)
        recorded = "" if base else f"{r['recorded']:,}"
        drain = "" if base else f"{r['drain_seconds']:.2f} s"
        lines.append(f"| {name} | {r['rate']:,.0f} | {r['rate'] / baseline:.2f} | {r['requests']:,} | {recorded} | "
                     f"{drain} | {r['bad']} | {r['p50']} ms | {r['p99']} ms | {bar} |")
    lines += ["", "A hit is answered in front of Flask (campaigns/tracking_views.py TrackingFastPath): a signed-token "
              "check (the SMS link: its MAC, the URL of its link number cached per process; a code of the first "
              "form: one lookup by primary key), the event appended to the process's buffer (pushed to Redis in one "
              "RPUSH every 50 ms, campaigns/tracking.py HitBuffer) and the answer the Flask route gives, serialised "
              "once per URL; the drainer "
              "(campaigns/tracking.py drain_hits) then writes them to message_events, 5,000 a statement. The events "
              "recorded may exceed the requests wrk counted by the answers in flight when it stopped."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
