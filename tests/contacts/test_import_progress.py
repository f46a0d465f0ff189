"""An import job shows its progress while it runs: counters and bytes committed after each chunk,
read from outside the worker (API, admin page) the way a person polling the page sees them."""
from __future__ import annotations

import io
import os
import re
import threading

import sqlalchemy as sa

from contacts import importer
from contacts.importer import run_import_job
from contacts.models import ImportJob
from envoi.extensions import db
from tests.admin.conftest import make_staff

ROWS = 2000
CHUNK = 500  # 4 chunks of ~16 KB: the bytes read are known to within the 8 KB the reader reads ahead


def _csv() -> str:
    lines = ["email,first_name,city"]
    for i in range(ROWS):
        lines.append(f"person.number{i}@example.org,P{i},Lyon" if i != 4 else "not-an-email,Bad,Nice")
    return "\n".join(lines) + "\n"


def test_counters_and_percent_are_visible_between_chunks(app, marketer_api, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_ROWS", CHUNK)  # so the job is seen half-way
    staff = make_staff(app, "marketer", "watcher@example.org")
    resp = marketer_api.post("/api/v1/imports", data={"file": (io.BytesIO(_csv().encode()), "people.csv")},
                             content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert resp.get_json()["percent"] is None and resp.get_json()["bytes_read"] == 0

    seen: list[dict] = []  # what the API answered after each commit of the worker's session
    pages: list[str] = []

    def look():
        body = marketer_api.get(f"/api/v1/imports/{job_id}").get_json()
        if body["status"] == "running" and 0 < body["rows"] < ROWS and not pages:
            pages.append(staff.get(f"/admin/contacts/imports/{job_id}").get_data(as_text=True))
            pages.append(staff.get("/admin/contacts/import").get_data(as_text=True))
        seen.append(body)

    def watch(session):
        # From another thread: its own app context and database session, like another process.
        poller = threading.Thread(target=look)
        poller.start()
        poller.join()

    with app.app_context():
        session = db.session()
        sa.event.listen(session, "after_commit", watch)
        try:
            run_import_job(job_id)
        finally:
            sa.event.remove(session, "after_commit", watch)
        total = os.path.getsize(db.session.get(ImportJob, job_id).path)

    running = [s for s in seen if s["status"] == "running"]
    middle = [s for s in running if 0 < s["rows"] < ROWS]
    assert middle, seen
    # Counts only grow, chunk by chunk, and so do the bytes read.
    rows = [s["rows"] for s in middle]
    assert rows == sorted(rows) and sorted(set(rows)) == [500, 1000, 1500]
    assert all(0 < s["bytes_read"] < total and s["bytes_total"] == total for s in middle)
    assert all(0 < s["percent"] < 100 for s in middle)
    assert [s["bytes_read"] for s in middle] == sorted(s["bytes_read"] for s in middle)
    half = next(s for s in middle if s["rows"] == 1000)
    assert (half["created"], half["rejected"], half["updated"], half["unchanged"]) == (999, 1, 0, 0)

    job_page, list_page = pages
    assert 'data-status="running"' in job_page and "data-refresh" in job_page
    assert re.search(r'<progress id="percent" value="\d+" max="100">', job_page)
    assert re.search(r'id="rows">(500|1000|1500)<', job_page)
    assert re.search(r"running \d+ %", list_page) and 'id="jobs" data-refresh' in list_page

    done = marketer_api.get(f"/api/v1/imports/{job_id}").get_json()
    assert (done["status"], done["rows"], done["created"], done["rejected"]) == ("done", ROWS, ROWS - 1, 1)
    assert (done["percent"], done["bytes_read"], done["bytes_total"]) == (100, total, total)
    page = staff.get(f"/admin/contacts/imports/{job_id}").get_data(as_text=True)
    assert "data-refresh" not in page and 'id="rows">2000<' in page


def test_a_job_run_again_after_a_crash_counts_from_zero(app, marketer_api, monkeypatch):
    """The broker retries a job whose worker failed mid-way: the counters restart with the run."""
    monkeypatch.setattr(importer, "CHUNK_ROWS", CHUNK)
    resp = marketer_api.post("/api/v1/imports", data={"file": (io.BytesIO(_csv().encode()), "people.csv")},
                             content_type="multipart/form-data")
    job_id = resp.get_json()["id"]
    with app.app_context():
        jobs = ImportJob.__table__
        db.session.execute(sa.update(jobs).where(jobs.c.id == job_id).values(rows=7, created=7, bytes_read=50))
        db.session.commit()
        run_import_job(job_id)
        job = db.session.get(ImportJob, job_id)
        assert (job.status, job.rows, job.created, job.rejected, job.percent) == ("done", ROWS, ROWS - 1, 1, 100)
