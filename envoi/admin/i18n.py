"""French and English for the admin UI. Keys are the English text; French maps them.

The language is the user's setting (users.language), else Accept-Language, else English."""
from __future__ import annotations

from flask import request, session

LANGS = ("en", "fr")

FR = {
    "Log in": "Se connecter", "Log out": "Se déconnecter", "Email": "E-mail", "Password": "Mot de passe",
    "Wrong email or password.": "E-mail ou mot de passe incorrect.",
    "Too many attempts; try again in a minute.": "Trop de tentatives ; réessayez dans une minute.",
    "Dashboard": "Tableau de bord", "Contacts": "Contacts", "Forms": "Formulaires", "Segments": "Segments",
    "Campaigns": "Campagnes", "Outbox": "Boîte d'envoi", "Users": "Utilisateurs", "API tokens": "Jetons d'API",
    "Language": "Langue", "Save": "Enregistrer", "Create": "Créer", "Delete": "Supprimer", "Edit": "Modifier",
    "Cancel": "Annuler", "Search": "Rechercher", "Filter": "Filtrer", "Next page": "Page suivante",
    "First page": "Première page", "Status": "Statut", "Channel": "Canal", "Name": "Nom", "Role": "Rôle",
    "Contacts by channel and status": "Contacts par canal et statut",
    "Signups, last 30 days": "Inscriptions, 30 derniers jours", "Requested": "Demandées",
    "Confirmed": "Confirmées", "Opt-in rate": "Taux de confirmation", "Running campaigns": "Campagnes en cours",
    "Last campaigns": "Dernières campagnes", "Targeted": "Ciblés", "Sent": "Envoyés", "Failed": "Échecs",
    "Skipped": "Ignorés", "Bounced": "Rejetés", "Queued": "En attente", "Progress": "Progression",
    "Nothing yet.": "Rien pour l'instant.", "Saved.": "Enregistré.", "Timeline": "Historique",
    "Log a call or meeting": "Noter un appel ou un rendez-vous", "Call": "Appel", "Meeting": "Rendez-vous",
    "Note": "Note", "Export": "Exporter", "Erase": "Effacer", "Erase this contact for good?":
    "Effacer définitivement ce contact ?", "Import CSV": "Importer un CSV", "Import": "Import",
    "Rejected rows": "Lignes rejetées", "Created": "Créés", "Updated": "Mis à jour", "Unchanged": "Inchangés",
    "Rows": "Lignes", "All segments": "Tous les segments", "Segment": "Segment", "Topic": "Thématique",
    "New form": "Nouveau formulaire", "Fields": "Champs", "Topics": "Thématiques", "Consent text":
    "Texte de consentement", "Popup trigger": "Déclencheur du pop-up", "Preview": "Aperçu",
    "Embed snippet": "Code à intégrer", "Copy": "Copier", "Copied": "Copié", "Title": "Titre",
    "Double opt-in": "Double opt-in", "New segment": "Nouveau segment", "Rules": "Règles",
    "Add condition": "Ajouter une condition", "Add group": "Ajouter un groupe", "Match all": "Toutes",
    "Match any": "Au moins une", "Count": "Nombre", "Sample": "Échantillon", "contacts match":
    "contacts correspondent", "New campaign": "Nouvelle campagne", "Subject": "Objet", "HTML body":
    "Corps HTML", "Text body": "Corps texte", "SMS text": "Texte du SMS", "Send a test": "Envoyer un test",
    "Send now": "Envoyer maintenant", "Schedule": "Programmer", "Pause": "Suspendre", "Resume": "Reprendre",
    "Preview as contact": "Aperçu pour le contact", "Stats": "Statistiques", "Sent over time":
    "Envois dans le temps", "segments": "segments", "characters": "caractères", "Open": "Ouvrir",
    "To": "À", "Date": "Date", "Message": "Message", "Back": "Retour", "New user": "Nouvel utilisateur",
    "New token": "Nouveau jeton", "Revoke": "Révoquer", "Copy it now: it will not be shown again.":
    "Copiez-le maintenant : il ne sera plus affiché.", "Active": "Actif", "Deactivate": "Désactiver",
    "Activate": "Activer", "Phone": "Téléphone", "First name": "Prénom", "Last name": "Nom de famille",
    "City": "Ville", "Tags": "Étiquettes", "Email status": "Statut e-mail", "SMS status": "Statut SMS",
    "Lifecycle": "Cycle de vie", "Created at": "Créé le", "Delete draft": "Supprimer le brouillon",
    "Audience": "Audience", "Sender": "Expéditeur", "Edit contact": "Modifier le contact",
    "The dev outbox holds every message the system would have sent (no SMTP server or Twilio account set).":
    "La boîte d'envoi de développement contient chaque message que le système aurait envoyé (aucun serveur "
    "SMTP ni compte Twilio configuré).", "Raw message": "Message brut", "any": "tous",
    "Live count": "Comptage en direct", "When (your time)": "Quand (votre heure)",
    "Contact id": "Identifiant du contact", "Details": "Détails", "Download": "Télécharger",
    "Upload": "Envoyer", "Subscribe every row to topic": "Abonner chaque ligne à la thématique",
    "Imports": "Imports", "Data": "Données", "Figures as of": "Chiffres au", "Refresh": "Actualiser",
    "Automations": "Automatisations", "New automation": "Nouvelle automatisation", "Trigger": "Déclencheur",
    "Steps": "Étapes", "Step": "Étape", "Kind": "Type", "Enable": "Activer", "Enabled at": "Activée le",
    "Runs": "Parcours", "Entered": "Entrés", "Waiting": "En attente", "Exited": "Sortis", "Done": "Terminés",
    "Definition": "Définition", "Definition (JSON)": "Définition (JSON)", "Reentry": "Réentrée", "Then": "Alors",
    "Else": "Sinon", "days": "jours", "hours": "heures", "minutes": "minutes", "until": "jusqu'à",
    "Pause it to change its steps.": "Suspendez-la pour modifier ses étapes.",
    "It is created as a draft: nothing runs until it is enabled.":
    "Elle est créée en brouillon : rien ne s'exécute avant son activation.",
    "Matches the start of the email address, of the last name or of the phone number (06 12 … or +33 6 12 …).":
    "Trouve le début de l'adresse e-mail, du nom de famille ou du numéro de téléphone (06 12 … ou +33 6 12 …).",
    "Settings": "Réglages", "Description": "Description", "Label": "Libellé",
    "Custom attributes": "Attributs personnalisés", "Running configuration": "Configuration en cours",
    "What contacts subscribe to on forms and on their preferences page.":
    "Ce à quoi les contacts s'abonnent sur les formulaires et sur leur page de préférences.",
    "Declared with a type before contacts, forms and segments may use them (attributes.<key>); a declaration cannot be changed.":
    "Déclarés avec un type avant que contacts, formulaires et segments les utilisent (attributes.<clé>) ; "
    "une déclaration ne se modifie pas.",
    "Read-only: set through ENVOI_* environment variables (or .env) and a restart. Secrets are masked.":
    "Lecture seule : réglée par les variables d'environnement ENVOI_* (ou .env) et un redémarrage. "
    "Les secrets sont masqués.",
    "Purchases": "Achats", "RFM score": "Score RFM", "Engagement": "Engagement", "Subscription": "Abonnement",
    "not": "non", "Signs up to": "Inscrit à",
    "Updated as you type; nothing is saved until you press Save.":
    "Mis à jour pendant la saisie ; rien n'est enregistré avant « Enregistrer ».",
    "Conditions on contact fields, tags and attributes; purchases (SKU, category, period, count, amount); RFM group or scores; engagement with messages (sent, opened, clicked …); subscription to a channel or a topic. Tick “not” to exclude, group with “Match all / any”.":
    "Conditions sur les champs, étiquettes et attributs du contact ; achats (SKU, catégorie, période, nombre, "
    "montant) ; groupe ou scores RFM ; engagement avec les messages (envoyé, ouvert, cliqué …) ; abonnement à un "
    "canal ou à une thématique. Cochez « non » pour exclure, groupez avec « Toutes / Au moins une ».",
    "Analytics": "Analyses", "Report": "Bilan", "Delivered": "Délivrés", "Unique opens": "Ouvreurs uniques",
    "Open rate": "Taux d'ouverture", "Unique clicks": "Cliqueurs uniques", "Click-through rate": "Taux de clic",
    "Unsubscribes": "Désinscriptions", "Conversions": "Conversions", "Revenue": "Chiffre d'affaires",
    "Human opens and clicks only; set apart as bots or prefetch:":
    "Ouvertures et clics humains seulement ; mis à part comme robots ou préchargements :",
    "opens": "ouvertures", "clicks": "clics", "purchases": "achats",
    "Conversions: purchases within": "Conversions : achats dans les",
    "Opens and clicks over time": "Ouvertures et clics dans le temps", "Opens": "Ouvertures", "Clicks": "Clics",
    "Hour by hour for the first 48 hours, then day by day.":
    "Heure par heure les 48 premières heures, puis jour par jour.", "Top links": "Liens les plus cliqués",
    "From": "Du", "To (excluded)": "Au (exclu)",
    "Customers: the last 365 days unless a range is given; audience: all time unless a range is given; the portfolio is over all purchases.":
    "Clients : les 365 derniers jours sauf période choisie ; audience : depuis le début sauf période choisie ; "
    "le portefeuille porte sur tous les achats.",
    "Customers": "Clients", "Revenue per customer": "Chiffre d'affaires par client",
    "Purchase frequency": "Fréquence d'achat", "Retention": "Fidélisation",
    "Retention: share of the previous period's customers who bought again in this one":
    "Fidélisation : part des clients de la période précédente qui ont racheté dans celle-ci",
    "Portfolio": "Portefeuille", "RFM grid": "Grille RFM", "RFM groups": "Groupes RFM",
    "Customers (and revenue) by recency score (rows) and frequency score (columns), all monetary scores together.":
    "Clients (et chiffre d'affaires) par score de récence (lignes) et de fréquence (colonnes), tous scores de "
    "montant confondus.",
    "ABC classes": "Classes ABC", "Customers making 80 % of revenue": "Clients faisant 80 % du chiffre d'affaires",
    "Share of customers": "Part des clients", "Share of revenue": "Part du chiffre d'affaires",
    "Small customers with potential": "Petits clients à potentiel",
    "Low spend (monetary score 1-2) but recent (recency 4-5) and frequent (frequency 3-5).":
    "Petits montants (score de montant 1-2) mais récents (récence 4-5) et fréquents (fréquence 3-5).",
    "Contact": "Contact", "Last purchase": "Dernier achat", "Segment rule": "Règle de segment",
    "Create a segment from this rule": "Créer un segment avec cette règle",
    "Confirmed subscribers": "Abonnés confirmés", "Subscriber growth": "Croissance des abonnés",
    "subscribed": "abonnés", "unsubscribed": "désabonnés", "Opt-in funnel": "Entonnoir d'inscription",
    "By form": "Par formulaire", "By source": "Par source", "Data freshness": "Fraîcheur des données",
    "Contacts not updated for": "Contacts non mis à jour depuis",
    "About 10-12 % of contact data goes stale a year: re-confirm or clean stale contacts.":
    "Environ 10 à 12 % des données de contact vieillissent chaque année : faites reconfirmer ou nettoyez "
    "les contacts anciens.",
}
TEXTS = {"en": {}, "fr": FR}


def translator(lang: str):
    table = TEXTS.get(lang, {})
    return lambda key: table.get(key, key)


def pick_lang(user=None) -> str:
    """The session's explicit choice, else the user's setting, else the browser's."""
    chosen = session.get("admin_lang")
    if chosen in LANGS:
        return chosen
    if user is not None and getattr(user, "language", None) in LANGS:
        return user.language
    return request.accept_languages.best_match(LANGS, default="en") if request else "en"
