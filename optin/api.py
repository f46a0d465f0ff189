"""/api/v1/forms: signup forms (CRUD). Marketers write, viewers read."""
from flask.views import MethodView
from flask_smorest import Blueprint

from contacts.schemas import PageQuerySchema
from contacts.services import decode_cursor, encode_cursor
from envoi.api import SECURITY, json_object, page_limit
from envoi.auth.api import readonly_or
from envoi.errors import ValidationError
from optin import services
from optin.schemas import FormInSchema, FormPageSchema, FormSchema

blp = Blueprint("forms", __name__, url_prefix="/forms", description="Signup forms")


def _dump(form) -> dict:
    data = services.form_to_dict(form)
    data["fields_"] = data.pop("fields")
    return data


@blp.route("")
class Forms(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, FormPageSchema)
    def get(self, args):
        """Signup forms, in id order (cursor pages)."""
        after = decode_cursor(args["cursor"])
        if after is not None and (not after.isdigit() or len(after) > 19):
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"})
        forms, nxt = services.list_forms(int(after) if after else None, page_limit(args))
        return {"items": [_dump(f) for f in forms], "next": encode_cursor(nxt) if nxt else None}

    @blp.doc(security=SECURITY)
    @blp.arguments(FormInSchema)
    @blp.response(201, FormSchema)
    def post(self, data):
        """Create a form."""
        return _dump(services.create_form(json_object()))


@blp.route("/<id:form_id>")
class FormById(MethodView):
    decorators = [readonly_or("marketer")]

    @blp.doc(security=SECURITY)
    @blp.response(200, FormSchema)
    def get(self, form_id):
        """One form."""
        return _dump(services.get_form(form_id))

    @blp.doc(security=SECURITY)
    @blp.arguments(FormInSchema)
    @blp.response(200, FormSchema)
    def patch(self, data, form_id):
        """Change the given keys only."""
        return _dump(services.update_form(form_id, json_object()))

    @blp.doc(security=SECURITY)
    @blp.response(204)
    def delete(self, form_id):
        """Delete a form (consents given through it stay)."""
        services.delete_form(form_id)
        return ""
