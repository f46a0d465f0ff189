from envoi.errors import EnvoiError


class AuthError(EnvoiError):
    status = 401
    code = "unauthorized"
