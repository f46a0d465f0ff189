"""CSV import over HTTP: upload, then a worker runs it; poll the job for its summary."""
from flask_smorest import Blueprint

imports_blp = Blueprint("imports", __name__, url_prefix="/imports", description="CSV imports run by a worker")
