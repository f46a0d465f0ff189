"""French and English texts of the public pages and messages (the hosted form, confirm,
unsubscribe, preferences, SMS). The language comes from `?lang=`, else Accept-Language."""
from __future__ import annotations

from flask import request

LANGS = ("fr", "en")
DEFAULT_LANG = "en"

TEXTS = {
    "fr": {
        "email": "Adresse e-mail", "phone": "Téléphone mobile", "salutation": "Civilité",
        "first_name": "Prénom", "last_name": "Nom", "birth_date": "Date de naissance", "gender": "Genre",
        "address": "Adresse", "postal_code": "Code postal", "city": "Ville", "country": "Pays (code, ex. FR)",
        "language": "Langue", "timezone": "Fuseau horaire", "company_name": "Entreprise", "sector": "Secteur",
        "headcount": "Effectif", "lifecycle": "Statut", "source": "Comment nous avez-vous connus ?",
        "submit": "S'inscrire",
        "required": "obligatoire",
        "honeypot": "Ne remplissez pas ce champ",
        "check_inbox": "Merci ! Consultez votre boîte de réception : cliquez sur le lien que nous venons de "
                       "vous envoyer pour confirmer (vérifiez aussi vos courriers indésirables).",
        "thanks_title": "Merci !",
        "subscribed": "Merci ! Votre inscription est enregistrée.",
        "error_title": "Lien ou demande invalide",
        "origin_refused": "Ce site n'est pas autorisé à utiliser ce formulaire.",
        "honeypot_hint": "Laissez ce champ vide.",
        "consent_version": "version",
        "form_errors": "Merci de corriger les champs indiqués.",
        "session_expired": "La page a expiré : rechargez-la puis envoyez le formulaire à nouveau.",
        "confirm_title": "Confirmer mon inscription",
        "confirm_intro": "Cliquez sur le bouton pour confirmer votre inscription.",
        "confirm_button": "Je confirme",
        "confirmed_title": "Inscription confirmée",
        "confirmed_text": "C'est fait : votre inscription est confirmée. Merci !",
        "expired_title": "Lien expiré",
        "expired_text": "Ce lien de confirmation a expiré. Demandez-en un nouveau :",
        "resend_button": "M'envoyer un nouveau lien",
        "resent_text": "Si une inscription est en attente, un nouveau lien vient d'être envoyé.",
        "invalid_link": "Ce lien n'est pas valide. Vérifiez qu'il a été copié en entier.",
        "unsub_title": "Se désabonner",
        "unsub_intro_email": "Ne plus recevoir nos e-mails à l'adresse {address} ?",
        "unsub_intro_sms": "Ne plus recevoir nos SMS au {address} ?",
        "unsub_button": "Me désabonner",
        "unsub_done": "Vous êtes désabonné(e). Vous ne recevrez plus nos messages sur ce canal.",
        "preferences_link": "Gérer mes préférences",
        "pref_title": "Mes préférences",
        "pref_channels": "Canaux",
        "pref_email": "Recevoir des e-mails",
        "pref_sms": "Recevoir des SMS",
        "pref_topics": "Sujets",
        "pref_save": "Enregistrer",
        "pref_saved": "Vos préférences sont enregistrées.",
        "pref_export": "Télécharger mes données (JSON)",
        "pref_erase_title": "Effacer mes données",
        "pref_erase_confirm": "Je veux effacer toutes mes données. C'est définitif.",
        "pref_erase_button": "Effacer mes données",
        "pref_erase_needs_confirm": "Cochez la case pour confirmer l'effacement.",
        "pref_erased": "Vos données ont été effacées.",
        "pref_unavailable": "indisponible pour cette adresse",
        "email_subject": "Confirmez votre inscription : {title}",
        "sms_confirm": "Confirmez votre inscription a {title} : {url} (ou repondez OUI). STOP pour ne plus recevoir.",
        "sms_help": "{title} : messages d'information. Repondez STOP pour vous desabonner, START pour vous reabonner.",
        "sms_stopped": "Vous ne recevrez plus nos SMS. Repondez START pour vous reabonner.",
        "sms_started": "Merci, votre inscription SMS est confirmee. STOP pour ne plus recevoir.",
    },
    "en": {
        "email": "Email address", "phone": "Mobile phone", "salutation": "Title",
        "first_name": "First name", "last_name": "Last name", "birth_date": "Date of birth", "gender": "Gender",
        "address": "Address", "postal_code": "Postal code", "city": "City", "country": "Country (code, e.g. GB)",
        "language": "Language", "timezone": "Time zone", "company_name": "Company", "sector": "Sector",
        "headcount": "Headcount", "lifecycle": "Status", "source": "How did you hear about us?",
        "submit": "Sign up",
        "required": "required",
        "honeypot": "Leave this field empty",
        "check_inbox": "Thank you! Check your inbox: click the link we have just sent you to confirm "
                       "(look in your spam folder too).",
        "thanks_title": "Thank you!",
        "subscribed": "Thank you! Your subscription is recorded.",
        "error_title": "Invalid link or request",
        "origin_refused": "This site may not use this form.",
        "honeypot_hint": "Leave this field empty.",
        "consent_version": "version",
        "form_errors": "Please correct the fields shown.",
        "session_expired": "This page has expired: reload it and send the form again.",
        "confirm_title": "Confirm my subscription",
        "confirm_intro": "Click the button to confirm your subscription.",
        "confirm_button": "Confirm",
        "confirmed_title": "Subscription confirmed",
        "confirmed_text": "Done: your subscription is confirmed. Thank you!",
        "expired_title": "Link expired",
        "expired_text": "This confirmation link has expired. Ask for a new one:",
        "resend_button": "Send me a new link",
        "resent_text": "If a signup is waiting for confirmation, a new link has just been sent.",
        "invalid_link": "This link is not valid. Check that it was copied in full.",
        "unsub_title": "Unsubscribe",
        "unsub_intro_email": "Stop receiving our emails at {address}?",
        "unsub_intro_sms": "Stop receiving our text messages at {address}?",
        "unsub_button": "Unsubscribe",
        "unsub_done": "You are unsubscribed. You will not receive our messages on this channel any more.",
        "preferences_link": "Manage my preferences",
        "pref_title": "My preferences",
        "pref_channels": "Channels",
        "pref_email": "Receive emails",
        "pref_sms": "Receive text messages",
        "pref_topics": "Topics",
        "pref_save": "Save",
        "pref_saved": "Your preferences are saved.",
        "pref_export": "Download my data (JSON)",
        "pref_erase_title": "Erase my data",
        "pref_erase_confirm": "I want all my data erased. This cannot be undone.",
        "pref_erase_button": "Erase my data",
        "pref_erase_needs_confirm": "Tick the box to confirm the erasure.",
        "pref_erased": "Your data has been erased.",
        "pref_unavailable": "not available for this address",
        "email_subject": "Confirm your subscription: {title}",
        "sms_confirm": "Confirm your subscription to {title}: {url} (or reply YES). Reply STOP to opt out.",
        "sms_help": "{title}: information messages. Reply STOP to unsubscribe, START to subscribe again.",
        "sms_stopped": "You will not receive our text messages any more. Reply START to subscribe again.",
        "sms_started": "Thank you, your SMS subscription is confirmed. Reply STOP to opt out.",
    },
}


def pick_lang(fallback: str | None = None, req=None) -> str:
    """`?lang=fr|en` wins, then the browser's Accept-Language, then `fallback`, then English.
    `req`: the request (Flask's by default; the signup fast path passes its own)."""
    req = request if req is None else req
    wanted = (req.args.get("lang") or "").lower()
    if wanted in LANGS:
        return wanted
    best = req.accept_languages.best_match(LANGS)
    if best:
        return best
    return fallback if fallback in LANGS else DEFAULT_LANG


def lang_of(value: str | None, default: str = DEFAULT_LANG) -> str:
    """A stored language tag (fr-FR, en ...) as one of ours."""
    short = (value or "")[:2].lower()
    return short if short in LANGS else default


def texts(lang: str) -> dict:
    return TEXTS[lang if lang in LANGS else DEFAULT_LANG]
