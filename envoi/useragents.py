"""Machines by their user agent: crawlers, mail scanners, link previewers, HTTP libraries and
headless browsers. Their hits are kept out of people's figures (opens and clicks, form views)."""
from __future__ import annotations

import re

BOT_UA = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|python-|curl/|wget|go-http|java/|okhttp|libwww|httpclient|headless|phantom"
    r"|barracuda|mimecast|proofpoint|symantec|messagelabs|forcepoint|trendmicro|sophos|fireeye|ironport"
    r"|safelinks|linkscan|scanner|preview|facebookexternalhit|whatsapp|slackbot|skypeuripreview",
    re.I)


def is_machine(user_agent: str | None) -> bool:
    """No user agent, or one that names a machine."""
    ua = (user_agent or "").strip()
    return not ua or BOT_UA.search(ua) is not None
