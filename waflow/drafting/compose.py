"""The draft's text from its parts, in the order a lawyer reads it on WhatsApp.

First contact: the firm's acknowledgement (prepared with software, not legal advice, a lawyer will answer,
office hours) opens the draft. Then a greeting, the attachment and urgency lines where they apply, the
matched entries' answers (or the holding answer when nothing matched well), the intake questions still
missing, and the firm's closing. Every fixed sentence comes from the firm's ``_templates.yaml``.
"""
from __future__ import annotations

from collections.abc import Sequence

from waflow.drafting.templates import Templates


def compose(templates: Templates, language: str, *, answers: Sequence[str], first_contact: bool,
            contact_name: str | None, media_kinds: Sequence[str | None], urgent: bool,
            missing: Sequence[str], body: str | None = None) -> str:
    """The full draft. With ``body`` (the chat model's reply, which greets, acknowledges attachments and asks
    the intake questions itself) the draft is the acknowledgement, the body and the closing."""
    def t(key: str, **values: str) -> str:
        return templates.text(key, language, **values)

    parts = []
    if first_contact:
        parts.append(t("acknowledgement"))
    if body is not None:
        return "\n\n".join([*parts, body.strip(), t("closing")])
    name = (contact_name or "").strip()
    opening = [t("greeting", name=name) if name else t("greeting_anonymous")]
    for kind in dict.fromkeys(media_kinds):  # one line per kind, in the order received
        opening.append(t("media", media=templates.media_word(kind, language)))
    if urgent:
        opening.append(t("urgent"))
    parts.append("\n".join(opening))
    if answers:
        parts.extend(answers)
    else:
        parts.append(t("holding"))
    if missing:
        questions = [f"{n}. {t(f'intake.{field}')}" for n, field in enumerate(missing, 1)]
        parts.append("\n".join([t("intake_intro"), *questions]))
    parts.append(t("closing"))
    return "\n\n".join(parts)
