"""Campaign dispatch end to end: an email campaign to 100,000 contacts sent to Postfix's smtp-sink.

    python -m bench.bench_campaign [--url postgresql+psycopg://postgres@127.0.0.1/envoi_bench_campaign]
                                   [--contacts 100000] [--runs 3] [--million] [--sms 5000]

What is timed, in one run of this script:
- end to end: `campaigns.dispatch.launch` (the set-based INSERT ... SELECT of the deliveries, the
  batches enqueued) until the last delivery is recorded, with the worker processes `make run`
  starts (`dramatiq workers --processes 2 --threads 4`, the Procfile's command) on PostgreSQL and a
  Redis server from the venv, sending to `smtp-sink`; messages/s = sent / (last sent_at - launch);
- ceiling 1: `smtp-source` to the same smtp-sink, messages of the same size, 8 sessions;
- ceiling 2: a plain smtplib loop sending pre-rendered messages over one connection;
- the worker processes' peak RSS (the whole process tree) during the campaign, and with
  --million during a 1,000,000-recipient campaign;
- SMS against the fake Twilio API (tests/fakes.py) on loopback: unthrottled, then with
  ENVOI_SMS_RATE_PER_SECOND set, the rate held.
Every recipient is counted at the sink: sent deliveries == messages smtp-sink received.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import sqlalchemy as sa

from bench.common import (ROOT, TreeSampler, free_port, log, machine_lines, postgres_version, reset_and_migrate,
                          start_redis, write_section)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/envoi_bench_campaign"
WORKER_CMD = ["dramatiq", "workers", "--processes", "2", "--threads", "4"]  # the Procfile's worker line
HTML = """<html><head><style>
.box { font-family: Helvetica, Arial, sans-serif; color: #222; padding: 16px; }
.btn { background: #0b5; color: #fff; padding: 10px 18px; border-radius: 4px; text-decoration: none; }
h1 { font-size: 22px; } p { line-height: 1.5; }
</style></head><body><div class="box">
<h1>Bonjour {{ contact.first_name | default("client") }},</h1>
{% if contact.city %}<p>Nos nouveautés près de chez vous, à {{ contact.city }}.</p>{% endif %}
""" + "\n".join(f"<p>Paragraphe {i} : Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
                f"eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>" for i in range(60)) + """
<p><a class="btn" href="https://shop.example.org/soldes">Voir les soldes</a></p>
</div></body></html>"""

CONTACTS_SQL = """
INSERT INTO contacts (email, phone, first_name, city, country, lifecycle, tags, attributes, email_status,
                      sms_status, email_status_at, sms_status_at, created_at, updated_at, purchase_count,
                      purchase_total)
SELECT 'c' || g || '@example.org', '+3361' || lpad(g::text, 7, '0'), 'First' || (g % 5000),
       (ARRAY['Paris', 'Lyon', 'Marseille', 'Lille'])[1 + (g % 4)], 'FR', 'prospect', '[]'::jsonb, '{}'::jsonb,
       'confirmed', 'confirmed', now(), now(), now(), now(), 0, 0
FROM generate_series(1, :n) AS g
"""




def ensure_postfix_tools() -> None:
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return
    from envoi.run import apt_install

    # No mail system is configured: we only want the smtp-sink / smtp-source test programs.
    subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                   text=True, check=False)
    apt_install("postfix")


class Sink:
    """smtp-sink on loopback; counts the messages it accepted (its -c counter)."""

    def __init__(self):
        self.port = free_port()
        self.out = tempfile.NamedTemporaryFile("w+", suffix=".sink", delete=False)
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", "-m", "200", f"127.0.0.1:{self.port}",
                                      "1024"], stdout=self.out, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    def count(self) -> int:
        self.out.flush()
        text = Path(self.out.name).read_text(errors="replace")
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        os.unlink(self.out.name)




def fill(url: str, contacts: int) -> float:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    start = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(sa.text("TRUNCATE contacts, campaigns, deliveries, message_events, segments RESTART IDENTITY "
                             "CASCADE"))
        conn.execute(sa.text(CONTACTS_SQL), {"n": contacts})
        conn.execute(sa.text("VACUUM ANALYZE contacts"))
    engine.dispose()
    return time.perf_counter() - start


def app_for(env: dict):
    os.environ.update(env)
    from envoi import create_app

    return create_app()


def make_campaign(app, channel: str, name: str) -> int:
    from campaigns.models import Campaign
    from envoi.extensions import db
    from segments.services import create_segment

    with app.app_context():
        segment = create_segment(f"{name} audience", {"field": f"{channel}_status", "op": "eq", "value": "confirmed"})
        if channel == "email":
            campaign = Campaign(name=name, channel="email", segment_id=segment.id, subject="Les soldes, {{ contact.first_name }}",
                                html=HTML, exclude_segment_ids=[])
        else:
            campaign = Campaign(name=name, channel="sms", segment_id=segment.id, exclude_segment_ids=[],
                                body="Bonjour {{ contact.first_name }}, -20% ce week-end avec le code SOLDES.")
        db.session.add(campaign)
        db.session.commit()
        return campaign.id


def rendered_sample(app, campaign_id: int) -> bytes:
    from campaigns.models import Campaign
    from campaigns.rendering import compiled
    from contacts.models import Contact
    from envoi.extensions import db

    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        contact = db.session.scalars(sa.select(Contact).limit(1)).one()
        return compiled(campaign).email(contact, delivery_id=1).as_bytes()


def run_campaign(app, campaign_id: int, env: dict, *, timeout: float, sample_every: float = 0.2) -> dict:
    """Start the workers, launch, wait for the last delivery; (messages/s, peak RSS, counts)."""
    from campaigns import dispatch
    from campaigns.models import Delivery
    from envoi.extensions import db

    log_path = Path(env["ENVOI_INSTANCE_PATH"]) / "workers.log"
    with open(log_path, "a") as log_file:  # a pipe nobody reads would block the workers' logging
        workers = subprocess.Popen([str(Path(sys.executable).parent / WORKER_CMD[0]), *WORKER_CMD[1:]], cwd=ROOT,
                                   env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)  # the workers boot (imports, app) before the clock starts
        with TreeSampler(workers.pid, interval=sample_every) as sampler, app.app_context():
            start = time.time()
            dispatch.launch(campaign_id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pending = db.session.scalar(sa.select(sa.func.count()).where(
                    Delivery.campaign_id == campaign_id, Delivery.status.in_(("queued", "sending"))))
                db.session.rollback()
                if pending == 0:
                    break
                time.sleep(0.25)
            else:
                raise SystemExit(f"campaign {campaign_id} not finished after {timeout:.0f} s: {pending} pending")
            last = db.session.scalar(sa.select(sa.func.max(Delivery.sent_at)).where(Delivery.campaign_id == campaign_id))
            stats = dispatch.stats(campaign_id)
        elapsed = last.timestamp() - start
        return {"elapsed": elapsed, "rate": stats["sent"] / elapsed if elapsed > 0 else 0.0,
                "peak_rss": sampler.peak, "stats": stats}
    finally:
        workers.terminate()
        try:
            workers.wait(20)
        except subprocess.TimeoutExpired:
            workers.kill()


def smtp_source(port: int, size: int, count: int, sessions: int = 8) -> float:
    start = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(count), "-f", "bench@example.org",
                    "-t", "rcpt@example.org", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    return count / (time.perf_counter() - start)


def smtplib_loop(port: int, raw: bytes, count: int) -> float:
    messages = [raw.replace(b"Message-ID: <", f"Message-ID: <{i}.".encode(), 1) for i in range(count)]
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as conn:
        for msg in messages:
            conn.sendmail("bench@example.org", ["rcpt@example.org"], msg)
    return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ENVOI_BENCH_CAMPAIGN_URL", DEFAULT_URL.replace(
        "envoi_bench_campaign", (os.environ.get("ENVOI_BENCH_DATABASE_URL") or DEFAULT_URL).rsplit("/", 1)[1]
        + "_campaign")))
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--million", action="store_true", help="also a 1,000,000-recipient campaign (peak RSS)")
    parser.add_argument("--sms", type=int, default=5000)
    parser.add_argument("--sms-rate", type=float, default=100.0)
    args = parser.parse_args(argv)
    url = args.url if "+psycopg" in args.url else args.url.replace("postgresql://", "postgresql+psycopg://", 1)

    from envoi.run import ensure_postgres

    ensure_postgres(url)
    ensure_postfix_tools()
    workdir = tempfile.mkdtemp(prefix="envoi-bench-")
    redis_proc, redis_url = start_redis(workdir)
    sink = Sink()
    env = {"ENVOI_DATABASE_URL": url, "ENVOI_REDIS_URL": redis_url, "ENVOI_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
           "ENVOI_SECRET_KEY": "bench-secret-key-0123456789", "ENVOI_INSTANCE_PATH": workdir,
           "ENVOI_SMS_QUIET_HOURS": "off", "ENVOI_SMS_QUIET_DAYS": "off", "ENVOI_BROKER": "redis"}
    lines = machine_lines()
    try:
        log("reset + flask db upgrade")
        reset_and_migrate(url)
        app = app_for(env)
        results = []
        for run in range(args.runs):
            fill_s = fill(url, args.contacts)
            campaign_id = make_campaign(app, "email", f"bench email {run}")
            before = sink.count()
            log(f"run {run + 1}: {args.contacts:,} contacts loaded in {fill_s:.1f} s; sending")
            result = run_campaign(app, campaign_id, env, timeout=max(600, args.contacts / 50))
            result["received"] = sink.count() - before
            log(f"run {run + 1}: {result['stats']['sent']:,} sent in {result['elapsed']:.1f} s = {result['rate']:.0f}/s; "
                f"sink received {result['received']:,}; worker peak RSS {result['peak_rss'] / 2**20:.0f} MB")
            results.append(result)
        raw = rendered_sample(app, campaign_id)
        size = len(raw)
        source_rates = [smtp_source(sink.port, size, 20_000) for _ in range(args.runs)]
        loop_rates = [smtplib_loop(sink.port, raw, 20_000) for _ in range(args.runs)]
        log(f"smtp-source {median(source_rates):.0f}/s, smtplib loop {median(loop_rates):.0f}/s ({size:,} bytes)")
        million = None
        if args.million:
            fill(url, 1_000_000)
            campaign_id = make_campaign(app, "email", "bench million")
            log("1,000,000-recipient campaign: sending")
            million = run_campaign(app, campaign_id, env, timeout=4 * 3600, sample_every=1.0)
            log(f"million: {million['rate']:.0f}/s, worker peak RSS {million['peak_rss'] / 2**20:.0f} MB")
        sms = bench_sms(app, url, env, args)
    finally:
        sink.stop()
        redis_proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    rate = median(r["rate"] for r in results)
    src, loop = median(source_rates), median(loop_rates)
    peak = max(r["peak_rss"] for r in results)
    all_received = all(r["received"] == r["stats"]["sent"] == args.contacts for r in results)
    body = ["## Campaigns: email dispatch end to end", "", *lines,
            f"- PostgreSQL {postgres_version(url)}; Redis from the venv; Postfix smtp-sink on loopback; workers: "
            f"`{' '.join(WORKER_CMD)}` (the Procfile's line); message size {size:,} bytes (HTML + text, CSS inlined, "
            "footer, List-Unsubscribe)",
            f"- {args.runs} runs of a campaign to {args.contacts:,} confirmed contacts; time from `launch` to the last "
            "delivery recorded (`max(sent_at)`); the sink's own counter checked against the sent deliveries: "
            + ("every recipient received exactly one message" if all_received else "**MISMATCH** (see runs)"),
            "", "| measure | median | runs | bar |", "|---|---:|---|---|",
            f"| end to end, messages/s | {rate:,.0f} | {', '.join(format(r['rate'], ',.0f') for r in results)} | "
            f"≥ 1,000: {'met' if rate >= 1000 else 'NOT met'} |",
            f"| ceiling: smtp-source → smtp-sink, 8 sessions, messages/s | {src:,.0f} | "
            f"{', '.join(format(x, ',.0f') for x in source_rates)} | |",
            f"| ceiling: plain smtplib loop of pre-rendered messages, messages/s | {loop:,.0f} | "
            f"{', '.join(format(x, ',.0f') for x in loop_rates)} | |",
            f"| ratio end to end / smtp-source | {rate / src:.2f} | | ≥ 0.25: {'met' if rate / src >= 0.25 else 'NOT met'} |",
            f"| ratio end to end / smtplib loop | {rate / loop:.2f} | | |",
            f"| worker processes' peak RSS ({args.contacts:,} recipients) | {peak / 2**20:,.0f} MB | | |"]
    if million:
        body.append(f"| worker processes' peak RSS (1,000,000 recipients; {million['rate']:,.0f} messages/s) | "
                    f"{million['peak_rss'] / 2**20:,.0f} MB | | < 200 MB per worker: "
                    f"{'met' if million['peak_rss'] / 2 < 200 * 2**20 else 'NOT met'} |")
    body += ["", "## Campaigns: SMS dispatch against the fake Twilio API", "",
             f"- {args.sms:,} SMS per run, fake Twilio (tests/fakes.py, threaded HTTP server) on loopback, same workers",
             "", "| measure | value | bar |", "|---|---:|---|",
             f"| unthrottled, SMS/s | {sms['free']:,.0f} | ≥ 300: {'met' if sms['free'] >= 300 else 'NOT met'} |",
             f"| ENVOI_SMS_RATE_PER_SECOND={args.sms_rate:g}: measured SMS/s | {sms['held']:,.1f} | within 5%: "
             f"{'met' if abs(sms['held'] - args.sms_rate) <= 0.05 * args.sms_rate else 'NOT met'} |"]
    write_section("campaigns", "\n".join(body))
    log("written to BENCHMARKS.md")


def bench_sms(app, url: str, env: dict, args) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.fakes import FakeTwilio

    fake = FakeTwilio().start()
    twilio_env = {**env, "ENVOI_TWILIO_ACCOUNT_SID": fake.account_sid, "ENVOI_TWILIO_AUTH_TOKEN": fake.auth_token,
                  "ENVOI_TWILIO_API_BASE": fake.url, "ENVOI_TWILIO_FROM": "+33700000000"}
    rates = {}
    try:
        for key, extra in (("free", {}), ("held", {"ENVOI_SMS_RATE_PER_SECOND": str(args.sms_rate)})):
            fill(url, args.sms)
            app.config.update({"TWILIO_ACCOUNT_SID": fake.account_sid, "TWILIO_AUTH_TOKEN": fake.auth_token,
                               "TWILIO_API_BASE": fake.url, "TWILIO_FROM": "+33700000000"})
            campaign_id = make_campaign(app, "sms", f"bench sms {key}")
            fake.clear()
            result = run_campaign(app, campaign_id, {**twilio_env, **extra}, timeout=600)
            if len(fake.messages) != result["stats"]["sent"]:
                raise SystemExit(f"fake Twilio got {len(fake.messages)} SMS for {result['stats']['sent']} sent")
            rates[key] = result["rate"]
            log(f"sms {key}: {result['rate']:.1f}/s")
    finally:
        fake.stop()
    return rates


if __name__ == "__main__":
    main()
