"""Upload a CSV through the API; the import runs in a Dramatiq worker (StubBroker)."""
import io
from datetime import timedelta

import dramatiq
import pytest
import sqlalchemy as sa

from contacts import services
from contacts.importer import requeue_stale_jobs, run_import_job
from contacts.models import Contact, ImportJob
from envoi.extensions import db
from envoi.types import utcnow
from workers import broker
from workers.actors import run_import
from workers.broker import app_context_middleware


@pytest.fixture
def worker(app):
    app_context_middleware(broker)._app = app
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()


def upload(api, text, **form):
    data = {"file": (io.BytesIO(text.encode()), "people.csv"), **form}
    return api.post("/api/v1/imports", data=data, content_type="multipart/form-data")


def test_upload_runs_in_the_worker_and_reports_counts(app, marketer_api, worker):
    with app.app_context():
        services.create_topic("news", "News")
    resp = upload(marketer_api, "email,city\na@example.fr,Lyon\nbad,Nice\n", topic="news")
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()
    assert job["status"] == "queued"
    broker.join(run_import.queue_name)
    worker.join()
    done = marketer_api.get(f"/api/v1/imports/{job['id']}").get_json()
    assert (done["status"], done["rows"], done["created"], done["rejected"]) == ("done", 2, 1, 1)
    rejects = marketer_api.get(f"/api/v1/imports/{job['id']}/rejects")
    assert rejects.status_code == 200 and rejects.mimetype == "text/csv"
    assert "bad,Nice,email:" in rejects.get_data(as_text=True)
    with app.app_context():
        (contact,) = db.session.scalars(sa.select(Contact)).all()
        assert services.contact_topics([contact.id]) == {contact.id: ["news"]}
        # Running the message again does nothing: the job is done.
        run_import_job(job["id"])
        assert db.session.get(ImportJob, job["id"]).created == 1


def test_bad_uploads_are_4xx_naming_the_field(app, marketer_api, viewer_api):
    resp = marketer_api.post("/api/v1/imports", data={}, content_type="multipart/form-data")
    assert resp.status_code == 422 and "file" in resp.get_json()["fields"]
    resp = upload(marketer_api, "email\na@example.fr\n", topic="nope")
    assert resp.status_code == 422 and "topic" in resp.get_json()["fields"]
    resp = upload(marketer_api, "shoe,size\n42,43\n")
    assert resp.status_code == 422 and "file" in resp.get_json()["fields"]
    data = {"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "x.csv")}
    resp = marketer_api.post("/api/v1/imports", data=data, content_type="multipart/form-data")
    assert resp.status_code == 422 and "file" in resp.get_json()["fields"]
    assert upload(viewer_api, "email\na@example.fr\n").status_code == 403
    assert marketer_api.get("/api/v1/imports/999").status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ImportJob)) == 0


def test_stale_queued_jobs_are_requeued(app, marketer_api):
    app_context_middleware(broker)._app = app
    resp = upload(marketer_api, "email\nlost@example.fr\n")
    job_id = resp.get_json()["id"]
    broker.flush_all()  # the broker lost the message
    with app.app_context():
        db.session.execute(sa.update(ImportJob).where(ImportJob.id == job_id)
                           .values(created_at=utcnow() - timedelta(minutes=3)))
        db.session.commit()
        assert requeue_stale_jobs() == 1
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join(run_import.queue_name)
        worker.join()
    finally:
        worker.stop()
    assert marketer_api.get(f"/api/v1/imports/{job_id}").get_json()["status"] == "done"
