"""Import benchmark: `python bench/bench_import.py [--rows 1000000] [--database-url ...]`.

Generates a deterministic CSV of realistic contacts (bench/data/), imports it with the CLI into
a fresh PostgreSQL database (full validation), re-imports it (all unchanged), measures
PostgreSQL's own COPY of the same file into a bare table (the ceiling), then times the API's
filtered list page over the imported contacts. Writes the figures to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, fresh_database, machine_lines, percentile, postgres_version, run_timed, write_section  # noqa: E402

DATA = ROOT / "bench" / "data"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/envoi_bench"

FIRST = ["Jean", "Marie", "Pierre", "Camille", "Louis", "Léa", "Hugo", "Chloé", "Lucas", "Manon", "Gabriel", "Inès",
         "Arthur", "Jade", "Raphaël", "Louise", "Jules", "Emma", "Adam", "Alice", "Noé", "Zoé", "Éloïse", "Maël",
         "Sofia", "Mohamed", "Yasmine", "Thomas", "Nathalie", "François", "Hélène", "Mathéo", "Anaïs", "Kevin"]
LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
        "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier",
        "Morel", "Girard", "André", "Lefebvre", "Mercier", "Dupont", "Lambert", "Bonnet", "François", "Martinez",
        "Nguyen", "Benali", "Da Silva", "Müller", "O'Brien", "Le Goff"]
CITIES = [("Paris", "750"), ("Marseille", "130"), ("Lyon", "690"), ("Toulouse", "310"), ("Nice", "060"),
          ("Nantes", "440"), ("Montpellier", "340"), ("Strasbourg", "670"), ("Bordeaux", "330"), ("Lille", "590"),
          ("Rennes", "350"), ("Reims", "510"), ("Saint-Étienne", "420"), ("Le Havre", "760"), ("Grenoble", "380"),
          ("Dijon", "210"), ("Angers", "490"), ("Nîmes", "300"), ("Aix-en-Provence", "131"), ("Brest", "290")]
DOMAINS = ["gmail.com", "orange.fr", "free.fr", "wanadoo.fr", "laposte.net", "yahoo.fr", "hotmail.fr", "sfr.fr",
           "outlook.com", "icloud.com", "exemple-entreprise.fr"]
STREETS = ["rue de la République", "avenue Jean Jaurès", "boulevard Victor Hugo", "rue Pasteur", "place de la Mairie",
           "chemin des Vignes", "rue du Général Leclerc", "allée des Tilleuls"]
TAGS = ["vip", "newsletter", "salon-2024", "b2b", "fidelite", "black-friday", "parrainage"]
SECTORS = ["retail", "industrie", "services", "santé", "éducation", "tourisme"]
COLUMNS = ["email", "phone", "salutation", "first_name", "last_name", "birth_date", "gender", "address", "postal_code",
           "city", "country", "language", "company_name", "sector", "lifecycle", "source", "tags", "email_status",
           "consent_source", "consent_at", "consent_text"]
_ASCII = str.maketrans("éèêëàâäîïôöûüùçÉÈÀÎÔÇ' ", "eeeeaaaiioouuucEEAIOC--")


def generate(path: Path, rows: int, phone_share: float, seed: int = 42) -> None:
    """Deterministic: the same arguments always write the same file."""
    rnd = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    base = date(1950, 1, 1)
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for i in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            city, prefix = rnd.choice(CITIES)
            local = f"{first}.{last}".lower().translate(_ASCII)
            email = f"{local}.{i}@{rnd.choice(DOMAINS)}"
            if rnd.random() < 0.05:
                email = email.upper()  # normalised to lower case on import
            phone = ""
            if rnd.random() < phone_share:
                # Unique mobile numbers, written the ways people type them.
                digits = f"6{i:08d}" if rnd.random() < 0.5 else f"78{i:07d}"
                phone = rnd.choice([f"0{digits}", f"+33 {digits[0]} {digits[1:3]} {digits[3:5]} {digits[5:7]} {digits[7:]}",
                                    f"0{digits[0]}.{digits[1:3]}.{digits[3:5]}.{digits[5:7]}.{digits[7:]}"])
            confirmed = rnd.random() < 0.3
            b2b = rnd.random() < 0.15
            out.writerow([
                email, phone, rnd.choice(["M.", "Mme", ""]), first, last,
                (base + timedelta(days=rnd.randrange(20000))).isoformat() if rnd.random() < 0.6 else "",
                rnd.choice(["F", "M", "femme", "homme", ""]),
                f"{rnd.randrange(1, 200)} {rnd.choice(STREETS)}", f"{prefix}{rnd.randrange(10, 99)}", city, "FR",
                rnd.choice(["fr", "fr-FR", "en"]), f"{last} SARL" if b2b else "", rnd.choice(SECTORS) if b2b else "",
                rnd.choice(["prospect", "customer", "customer", "former"]), rnd.choice(["site", "salon", "boutique", ""]),
                "|".join(rnd.sample(TAGS, rnd.randrange(0, 3))),
                "confirmed" if confirmed else "",
                "formulaire site" if confirmed else "",
                f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T10:00:00Z" if confirmed else "",
                "J'accepte de recevoir la newsletter" if confirmed else "",
            ])
    tmp.replace(path)




def flask_env(url: str, instance: str) -> dict:
    env = dict(os.environ, ENVOI_DATABASE_URL=url, ENVOI_INSTANCE_PATH=instance,
               ENVOI_SECRET_KEY="bench-secret-key-0123456789")
    env.pop("ENVOI_BROKER", None)
    return env


def flask(*args) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "wsgi", *args]


def cpu_timed(cmd: list[str], env: dict) -> tuple[float, int, str, float]:
    """run_timed plus the CPU seconds (user + system) of the process tree: the CLI and its validation
    pool (PostgreSQL's own work is not in it). On a shared machine this moves less than the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, out = run_timed(cmd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, rss, out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_run(url: str, csv_path: Path, instance: str, runs: int = 1) -> dict:
    """The first import `runs` times, each into a fresh database (the median run is reported, every
    wall time is listed), then the same file again into the last one."""
    env = flask_env(url, instance)
    rejects = str(Path(instance) / "rejects.csv")
    firsts = []
    for _ in range(runs):
        fresh_database(url)
        run_timed(flask("db", "upgrade"), env)
        wall, rss, out, cpu = cpu_timed(flask("contacts", "import", str(csv_path), "--rejects", rejects), env)
        firsts.append({"wall": wall, "rss": rss, "cpu": cpu,
                       "summary": next(line for line in out.splitlines() if " rows: " in line)})
    median = sorted(firsts, key=lambda r: r["wall"])[len(firsts) // 2]
    wall2, rss2, out2, cpu2 = cpu_timed(flask("contacts", "import", str(csv_path), "--rejects", rejects), env)
    summary2 = next(line for line in out2.splitlines() if " rows: " in line)
    return {**median, "walls": [r["wall"] for r in firsts], "rss_max": max(r["rss"] for r in firsts),
            "wall2": wall2, "rss2": rss2, "summary2": summary2, "cpu2": cpu2}


def copy_baseline(url: str, csv_path: Path) -> float:
    """PostgreSQL's own COPY of the file into a bare table of text columns: the ceiling."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        cols = ", ".join(f'"{c}" text' for c in COLUMNS)
        conn.execute(f"DROP TABLE IF EXISTS bench_staging; CREATE UNLOGGED TABLE bench_staging ({cols})")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as cur, open(csv_path, "rb") as fh:
            with cur.copy("COPY bench_staging FROM STDIN (FORMAT csv, HEADER true)") as copy:
                while block := fh.read(1 << 20):
                    copy.write(block)
        conn.commit()
        took = time.perf_counter() - start
        conn.execute("DROP TABLE bench_staging")
        conn.commit()
    return took


def list_page(url: str, instance: str, runs: int) -> dict:
    """GET /api/v1/contacts?city=Lyon&limit=50 and its next page through the Flask test client."""
    os.environ.update(flask_env(url, instance))
    import sqlalchemy as sa
    from sqlalchemy import event

    from envoi import create_app
    from envoi.auth.services import create_token, create_user
    from envoi.extensions import db

    app = create_app()
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE contacts"))
        create_user("bench@example.org", "viewer", "correct horse battery")
        _, token = create_token("bench@example.org", "bench")
        engine = db.engine
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    seen: list = []

    def capture(conn, cursor, statement, params, context, executemany):
        if "FROM contacts" in statement and "lower(contacts.city)" in statement:
            seen.append((statement, params))

    def timed(path):
        times = []
        body = None
        for _ in range(runs):
            start = time.perf_counter()
            resp = client.get(path, headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            body = resp.get_json()
        return times, body

    client.get("/api/v1/contacts?city=Lyon&limit=50", headers=headers)  # warm up
    first, body = timed("/api/v1/contacts?city=Lyon&limit=50")
    nxt, _ = timed(f"/api/v1/contacts?city=Lyon&limit=50&cursor={body['next']}")
    event.listen(engine, "before_cursor_execute", capture)
    client.get(f"/api/v1/contacts?city=Lyon&limit=50&cursor={body['next']}", headers=headers)
    event.remove(engine, "before_cursor_execute", capture)
    statement, params = seen[0]
    with engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        cur.execute("EXPLAIN " + statement, params)
        plan = [row[0] for row in cur.fetchall()]
        count = conn.execute(sa.text("SELECT count(*) FROM contacts WHERE lower(city) = 'lyon'")).scalar()
    return {"first": first, "next": nxt, "items": len(body["items"]), "plan": plan, "lyon": count}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--phone-share", type=float, default=0.5, help="share of rows with a phone number")
    parser.add_argument("--all-phones-rows", type=int, default=None,
                        help="rows of the all-phones run (default: rows / 5; 0 skips it)")
    parser.add_argument("--database-url", default=os.environ.get("ENVOI_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--runs", type=int, default=30, help="requests per list-page measurement")
    parser.add_argument("--import-runs", type=int, default=3, help="first imports, each into a fresh database (median)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    url = args.database_url
    all_rows = args.rows // 5 if args.all_phones_rows is None else args.all_phones_rows

    csv_path = DATA / f"contacts-{args.rows}-{int(args.phone_share * 100)}.csv"
    if not csv_path.exists():
        print(f"generating {csv_path} ...", flush=True)
        generate(csv_path, args.rows, args.phone_share)
    size_mb = csv_path.stat().st_size / 2**20
    header = machine_lines([sys.executable.rsplit('/', 1)[-1], *sys.argv])  # date and load at the start
    instance = tempfile.mkdtemp(prefix="envoi-bench-")

    print("COPY baseline ...", flush=True)
    fresh_database(url)
    copy_s = copy_baseline(url, csv_path)
    print(f"importing {args.rows} rows, {args.import_runs} time(s) ...", flush=True)
    main_run = import_run(url, csv_path, instance, args.import_runs)

    phones_run = None
    if all_rows:
        phones_path = DATA / f"contacts-{all_rows}-100.csv"
        if not phones_path.exists():
            generate(phones_path, all_rows, 1.0, seed=7)
        phones_url = url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1] + "_phones"
        print(f"importing {all_rows} rows, all with a phone ...", flush=True)
        phones_run = import_run(phones_url, phones_path, tempfile.mkdtemp(prefix="envoi-bench-"))
        phones_run["rows"] = all_rows

    print("list page ...", flush=True)
    page = list_page(url, instance, args.runs)

    rate = args.rows / main_run["wall"]
    copy_rate = args.rows / copy_s
    lines = [
        "## CSV import (PostgreSQL)",
        "",
        *header,
        f"- PostgreSQL {postgres_version(url)} on the same machine; file {csv_path.name} ({size_mb:.0f} MiB, "
        f"{int(args.phone_share * 100)}% of rows with a phone, 30% confirmed with consent columns)",
        "- the import is `flask contacts import FILE` in a subprocess, full validation (`clean_contact` on every row), "
        "wall time includes start-up; RSS is the peak of the process tree (CLI + validation pool), sampled every 0.1 s",
        "",
        "| run | rows | wall | rows/s | peak RSS | CPU of CLI + pool | summary |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| first import into an empty table, median of {len(main_run['walls'])} "
        f"({', '.join(f'{w:.1f} s' for w in main_run['walls'])}) | {args.rows:,} | {main_run['wall']:.1f} s | **{rate:,.0f}** | "
        f"{main_run['rss'] / 2**20:.0f} MB | {main_run['cpu']:.1f} s ({main_run['cpu'] / args.rows * 1e6:.0f} µs/row) | "
        f"{main_run['summary']} |",
        f"| same file again (idempotent) | {args.rows:,} | {main_run['wall2']:.1f} s | {args.rows / main_run['wall2']:,.0f} | "
        f"{main_run['rss2'] / 2**20:.0f} MB | {main_run['cpu2']:.1f} s ({main_run['cpu2'] / args.rows * 1e6:.0f} µs/row) | "
        f"{main_run['summary2']} |",
    ]
    if phones_run:
        n = phones_run["rows"]
        lines.append(f"| every row with a phone | {n:,} | {phones_run['wall']:.1f} s | "
                     f"{n / phones_run['wall']:,.0f} | {phones_run['rss'] / 2**20:.0f} MB | "
                     f"{phones_run['cpu']:.1f} s ({phones_run['cpu'] / n * 1e6:.0f} µs/row) | {phones_run['summary']} |")
    lines += [
        f"| baseline: PostgreSQL `COPY` of the same file into a bare unlogged text table | {args.rows:,} | "
        f"{copy_s:.1f} s | {copy_rate:,.0f} | | | no validation, no indexes |",
        "",
        f"Import / COPY ceiling: {rate / copy_rate:.0%} of COPY's rate ({main_run['wall'] / copy_s:.1f}x its time). "
        f"Bar: >= 20,000 rows/s, peak RSS < 300 MB: "
        f"**{'met' if rate >= 20_000 and main_run['rss_max'] < 300 * 2**20 else 'NOT met'}** "
        f"({rate:,.0f} rows/s median, largest peak RSS {main_run['rss_max'] / 2**20:.0f} MB; load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}).",
        "",
        f"### API list page over {args.rows:,} contacts ({page['lyon']:,} in Lyon)",
        "",
        f"`GET /api/v1/contacts?city=Lyon&limit=50` through the Flask test client, {args.runs} runs each (bar: < 100 ms):",
        "",
        "| page | median | p95 |",
        "|---|---:|---:|",
        f"| first | {statistics.median(page['first']):.1f} ms | {percentile(page['first'], 0.95):.1f} ms |",
        f"| next (cursor) | {statistics.median(page['next']):.1f} ms | {percentile(page['next'], 0.95):.1f} ms |",
        "",
        "EXPLAIN of the next page's query:",
        "",
        "```",
        *page["plan"],
        "```",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("import", body)
        print("\nwritten to BENCHMARKS.md")


if __name__ == "__main__":
    main()
