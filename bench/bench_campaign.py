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
- the worker processes' peak RSS, per process and for the tree (the `dramatiq` parent and its
  workers), for a campaign a tenth the size first and then the full one (flat or not), and with
  --million during a 1,000,000-recipient campaign; the workers' CPU seconds per message;
- SMS against the fake Twilio API (tests/fakes.py) on loopback: a plain loop of the twilio
  client's calls (the baseline), the campaign unthrottled, then with ENVOI_SMS_RATE_PER_SECOND
  set: the rate at the provider (its arrival times) and end to end.
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




class WorkerSampler(TreeSampler):
    """The tree's peak RSS (TreeSampler) and each process's own peak, by pid."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(pid, interval)
        self.per_process: dict[int, int] = {}
        self.cpu: dict[int, float] = {}  # user + system seconds, last seen, by pid

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                total = 0
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    try:
                        rss = p.memory_info().rss
                        times = p.cpu_times()
                    except psutil.Error:
                        continue
                    self.cpu[p.pid] = times.user + times.system
                    total += rss
                    self.per_process[p.pid] = max(self.per_process.get(p.pid, 0), rss)
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(self.interval)

    @property
    def worker_peak(self) -> int:
        """The largest peak of one worker process (the parent only forks and waits)."""
        return max((rss for pid, rss in self.per_process.items() if pid != self.proc.pid), default=0)


def tree_cpu(pid: int) -> float:
    """User + system seconds of a process and its children so far."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


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
        with WorkerSampler(workers.pid, interval=sample_every) as sampler, app.app_context():
            booted = tree_cpu(workers.pid)  # the workers' start (imports, app) is not the campaign's
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
                "cpu_per_message": (sum(sampler.cpu.values()) - booted) / max(1, stats["sent"]),
                "peak_rss": sampler.peak, "worker_rss": sampler.worker_peak,
                "parent_rss": sampler.per_process.get(workers.pid, 0), "stats": stats}
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
    parser.add_argument("--sms", type=int, default=5000, help="SMS per run (0: no SMS part)")
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
    small_size = max(1, args.contacts // 10)
    try:
        log("reset + flask db upgrade")
        reset_and_migrate(url)
        app = app_for(env)

        def email_run(label: str, contacts: int, **kw) -> dict:
            fill_s = fill(url, contacts)
            campaign_id = make_campaign(app, "email", f"bench email {label}")
            before = sink.count()
            log(f"{label}: {contacts:,} contacts loaded in {fill_s:.1f} s; sending")
            result = run_campaign(app, campaign_id, env, **kw)
            result["received"] = sink.count() - before
            result["contacts"], result["campaign_id"] = contacts, campaign_id
            log(f"{label}: {result['stats']['sent']:,} sent in {result['elapsed']:.1f} s = {result['rate']:.0f}/s; "
                f"sink received {result['received']:,}; peak RSS: tree {result['peak_rss'] / 2**20:.0f} MB, "
                f"largest worker {result['worker_rss'] / 2**20:.0f} MB; workers' CPU "
                f"{result['cpu_per_message'] * 1e3:.2f} ms/message")
            return result

        # A campaign a tenth the size first: the workers' memory must not depend on the campaign's size.
        small = email_run("small", small_size, timeout=max(600, small_size / 50))
        results = [email_run(f"run {run + 1}", args.contacts, timeout=max(600, args.contacts / 50))
                   for run in range(args.runs)]
        raw = rendered_sample(app, results[-1]["campaign_id"])
        size = len(raw)
        source_rates = [smtp_source(sink.port, size, 20_000) for _ in range(args.runs)]
        loop_rates = [smtplib_loop(sink.port, raw, 20_000) for _ in range(args.runs)]
        log(f"smtp-source {median(source_rates):.0f}/s, smtplib loop {median(loop_rates):.0f}/s ({size:,} bytes)")
        million = None
        if args.million:
            million = email_run("million", 1_000_000, timeout=4 * 3600, sample_every=1.0)
        sms = bench_sms(app, url, env, args) if args.sms > 0 else None
    finally:
        sink.stop()
        redis_proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    rate = median(r["rate"] for r in results)
    src, loop = median(source_rates), median(loop_rates)
    peak = max(r["peak_rss"] for r in results)
    worker_peak = max(r["worker_rss"] for r in results)
    all_received = all(r["received"] == r["stats"]["sent"] == r["contacts"] for r in [small, *results])
    mb = lambda n: f"{n / 2**20:,.0f} MB"  # noqa: E731
    sizes = [small, *results] + ([million] if million else [])
    flat = max(r["worker_rss"] for r in sizes) - small["worker_rss"]
    body = ["## Campaigns: email dispatch end to end", "", *lines,
            f"- PostgreSQL {postgres_version(url)}; Redis from the venv; Postfix smtp-sink on loopback; workers: "
            f"`{' '.join(WORKER_CMD)}` (the Procfile's line); message size {size:,} bytes (HTML + text, CSS inlined, "
            "footer, List-Unsubscribe, tracked links and pixel)",
            f"- {args.runs} runs of a campaign to {args.contacts:,} confirmed contacts (after one to {small_size:,}); "
            "time from `launch` to the last delivery recorded (`max(sent_at)`); the sink's own counter checked "
            "against the sent deliveries: "
            + ("every recipient received exactly one message" if all_received else "**MISMATCH** (see runs)"),
            "", "| measure | median | runs | bar |", "|---|---:|---|---|",
            f"| end to end, messages/s | {rate:,.0f} | {', '.join(format(r['rate'], ',.0f') for r in results)} | "
            f"≥ 1,000: {'met' if rate >= 1000 else 'NOT met'} |",
            f"| ceiling: smtp-source → smtp-sink, 8 sessions (a connection per message), messages/s | {src:,.0f} | "
            f"{', '.join(format(x, ',.0f') for x in source_rates)} | |",
            f"| ceiling: plain smtplib loop of pre-rendered messages (one connection), messages/s | {loop:,.0f} | "
            f"{', '.join(format(x, ',.0f') for x in loop_rates)} | |",
            f"| ratio end to end / smtp-source | {rate / src:.2f} | | ≥ 0.25: {'met' if rate / src >= 0.25 else 'NOT met'} |",
            f"| ratio end to end / smtplib loop | {rate / loop:.2f} | | |",
            f"| worker processes' CPU (user + system) per message, ms | "
            f"{median(r['cpu_per_message'] for r in results) * 1e3:.2f} | "
            f"{', '.join(format(r['cpu_per_message'] * 1e3, '.2f') for r in results)} | |",
            "", "Worker memory (peak RSS sampled every 0.2 s; the tree is the `dramatiq` parent, which forks and "
            "waits, plus its worker processes):", "",
            "| campaign | recipients | largest worker process | parent | tree | bar: < 200 MB per worker |",
            "|---|---:|---:|---:|---:|---|"]
    for label, r in [("small", small), *[(f"run {i + 1}", r) for i, r in enumerate(results)],
                     *([("million", million)] if million else [])]:
        body.append(f"| {label} | {r['contacts']:,} | {mb(r['worker_rss'])} | {mb(r['parent_rss'])} | "
                    f"{mb(r['peak_rss'])} | {'met' if r['worker_rss'] < 200 * 2**20 else 'NOT met'} |")
    body += ["", f"Largest worker's peak over every size minus the small campaign's: {flat / 2**20:+,.0f} MB "
             f"(flat: {'yes' if flat < 20 * 2**20 else 'no'}, within 20 MB). Largest tree: {mb(peak)}; largest "
             f"worker: {mb(worker_peak)}."]
    if sms is not None:
        held_ok = abs(sms["held_at_provider"] - args.sms_rate) <= 0.05 * args.sms_rate
        body += ["", "## Campaigns: SMS dispatch against the fake Twilio API", "",
                 f"- {args.sms:,} SMS per run; the fake Twilio (tests/fakes.py, a threaded HTTP server in the bench's "
                 "process) on loopback; the same workers; the official twilio client",
                 "- baseline in the same run: a plain loop of `client.messages.create` (one thread, one process) "
                 "against the same fake",
                 "", "| measure | value | bar |", "|---|---:|---|",
                 f"| unthrottled, SMS/s end to end (launch → last recorded) | {sms['free']:,.0f} | "
                 f"≥ 300: {'met' if sms['free'] >= 300 else 'NOT met'} |",
                 f"| baseline: plain loop of twilio-client calls, SMS/s | {sms['loop']:,.0f} | |",
                 f"| ratio unthrottled / plain loop | {sms['free'] / sms['loop']:.2f} | |",
                 f"| ENVOI_SMS_RATE_PER_SECOND={args.sms_rate:g}: rate at the provider (first to last SMS received) | "
                 f"{sms['held_at_provider']:,.1f} | within 5%: {'met' if held_ok else 'NOT met'} |",
                 f"| ... SMS received per whole second at the provider: min / median / max | "
                 f"{sms['held_windows'][0]} / {sms['held_windows'][1]} / {sms['held_windows'][2]} | |",
                 f"| ... end to end (launch → last recorded, includes the start) | {sms['held']:,.1f} | |"]
    write_section("campaigns", "\n".join(body))
    log("written to BENCHMARKS.md")


def twilio_loop(fake, count: int) -> float:
    """SMS/s of a plain loop of the official client's calls against the fake, in its own process."""
    code = f"""
import time
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

class Rebased(TwilioHttpClient):
    def request(self, method, url, *args, **kwargs):
        return super().request(method, {fake.url!r} + url[len("https://api.twilio.com"):], *args, **kwargs)

client = Client({fake.account_sid!r}, {fake.auth_token!r}, http_client=Rebased(pool_connections=True, timeout=30))
start = time.perf_counter()
for i in range({count}):
    client.messages.create(to=f"+3361{{i:07d}}", from_="+33700000000",
                           body="Bonjour First1, -20% ce week-end avec le code SOLDES.\\nSTOP au 36111")
print({count} / (time.perf_counter() - start))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def per_second(times: list[float]) -> tuple[int, int, int]:
    """(min, median, max) of the messages received in each whole second between the first and the last."""
    first = int(min(times)) + 1
    last = int(max(times))
    counts = [0] * max(1, last - first)
    for t in times:
        if first <= t < last:
            counts[int(t) - first] += 1
    return min(counts), int(median(counts)), max(counts)


def bench_sms(app, url: str, env: dict, args) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.fakes import FakeTwilio

    fake = FakeTwilio().start()
    twilio_env = {**env, "ENVOI_TWILIO_ACCOUNT_SID": fake.account_sid, "ENVOI_TWILIO_AUTH_TOKEN": fake.auth_token,
                  "ENVOI_TWILIO_API_BASE": fake.url, "ENVOI_TWILIO_FROM": "+33700000000"}
    rates = {}
    try:
        fake.clear()
        rates["loop"] = twilio_loop(fake, min(args.sms, 2000))
        log(f"sms plain loop: {rates['loop']:.1f}/s")
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
            times = list(fake.times)
            rates[f"{key}_at_provider"] = (len(times) - 1) / (max(times) - min(times))
            rates[f"{key}_windows"] = per_second(times)
            log(f"sms {key}: {result['rate']:.1f}/s end to end, {rates[key + '_at_provider']:.1f}/s at the provider, "
                f"per second min/median/max {rates[key + '_windows']}")
    finally:
        fake.stop()
    return rates


if __name__ == "__main__":
    main()
