"""CSV import over HTTP: upload, then a worker runs it; poll the job for its summary."""
from __future__ import annotations

import os

from flask import g, request, send_file
from flask_smorest import Blueprint

from contacts import importer
from contacts.models import ImportJob
from contacts.schemas import ImportJobSchema
from envoi.api import SECURITY
from envoi.auth.api import require
from envoi.errors import NotFound
from envoi.extensions import db

imports_blp = Blueprint("imports", __name__, url_prefix="/imports", description="CSV imports run by a worker")



def _job_dict(job: ImportJob) -> dict:
    iso = lambda v: v.isoformat() if v else None  # noqa: E731
    return {"id": job.id, "filename": job.filename, "status": job.status, "rows": job.rows, "created": job.created,
            "updated": job.updated, "unchanged": job.unchanged, "rejected": job.rejected,
            "bytes_read": job.bytes_read or 0, "bytes_total": job.bytes_total, "percent": job.percent, "error": job.error,
            "created_at": iso(job.created_at), "started_at": iso(job.started_at), "finished_at": iso(job.finished_at)}


def _get_job(job_id: int) -> ImportJob:
    job = db.session.get(ImportJob, job_id)
    if job is None:
        raise NotFound(f"no import {job_id}")
    return job


@imports_blp.route("", methods=["POST"])
@imports_blp.doc(security=SECURITY, requestBody={"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "UTF-8 CSV, contact keys as columns"},
                   "topic": {"type": "string", "description": "subscribe every row to this topic (slug)"}}}}}})
@imports_blp.response(202, ImportJobSchema)
@require("marketer")
def upload():
    """Upload a CSV file; a worker imports it. Poll GET /imports/{id} for the counts."""
    topic = (request.form.get("topic") or "").strip() or None
    job = importer.accept_upload(request.files.get("file"), topic, g.user.id)
    accepted = _job_dict(job)
    db.session.commit()
    return accepted, 202


@imports_blp.route("/<id:job_id>")
@imports_blp.doc(security=SECURITY)
@imports_blp.response(200, ImportJobSchema)
@require("marketer")
def get_job(job_id):
    """An import's status and counts; while it runs, the counts so far and how much of the file is read."""
    return _job_dict(_get_job(job_id))


@imports_blp.route("/<id:job_id>/rejects")
@imports_blp.doc(security=SECURITY)
@require("marketer")
def get_rejects(job_id):
    """The rejected rows as CSV (the original columns and a `reason` column)."""
    job = _get_job(job_id)
    if job.status != "done":
        raise NotFound(f"import {job_id} is {job.status}; rejects are ready when it is done")
    if not job.rejects_path or not os.path.exists(job.rejects_path):
        raise NotFound(f"import {job_id} rejected no row", {"rejected": "0"})
    return send_file(job.rejects_path, mimetype="text/csv", as_attachment=True,
                     download_name=f"import-{job_id}-rejects.csv")
