"""CSV import (written by the import work)."""
