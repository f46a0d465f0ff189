from envoi.errors import Conflict, NotFound, ValidationError  # noqa: F401  (the domain's error tree)


class Suppressed(Conflict):
    """The address or number was erased at the person's request and may not be re-added."""
