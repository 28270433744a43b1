"""Contacts and conversations: found or made, idempotently, by every stage that meets a client.

Core meets clients in their inbound messages, the sender in its accepted sends; both go
through these two functions, in the caller's transaction.

- a contact is keyed by ``wa_id`` and/or the business-scoped ``user_id`` (either may come
  first; a later message fills in the other);
- a conversation is a contact × a business number, and remembers the client's last
  inbound message (the 24-hour window).
"""
from __future__ import annotations

import functools
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam

from waflow.db import insert
from waflow.events import ContactInfo
from waflow.models import Contact, Conversation


@functools.cache
def _sql(dialect: str) -> SimpleNamespace:
    """The statements, built once per dialect with bound parameters."""
    conversation = insert(dialect, Conversation).values(
        contact_id=bindparam("contact_id"), phone_number_id=bindparam("phone_number_id"),
        display_phone_number=bindparam("display_phone_number"), last_inbound_at=bindparam("inbound_at"),
    )
    latest = sa.case(
        (Conversation.last_inbound_at.is_(None), conversation.excluded.last_inbound_at),
        (conversation.excluded.last_inbound_at > Conversation.last_inbound_at, conversation.excluded.last_inbound_at),
        else_=Conversation.last_inbound_at,
    )
    return SimpleNamespace(
        find_contact=sa.select(Contact.id, Contact.wa_id, Contact.user_id, Contact.name, Contact.username)
        .where(sa.or_(Contact.wa_id == bindparam("wa_id"), Contact.user_id == bindparam("user_id")))
        .order_by(Contact.wa_id.is_(None)).limit(1),
        insert_contact=insert(dialect, Contact).values(
            wa_id=bindparam("wa_id"), user_id=bindparam("user_id"), parent_user_id=bindparam("parent_user_id"),
            name=bindparam("name"), username=bindparam("username"),
        ).on_conflict_do_nothing().returning(Contact.id),
        upsert_conversation=conversation.on_conflict_do_update(
            index_elements=["contact_id", "phone_number_id"], set_={"last_inbound_at": latest}
        ).returning(Conversation.id),
    )


def upsert_contact(conn: sa.Connection, info: ContactInfo) -> int:
    """Return the contact's id, creating it or filling in what it lacked."""
    sql = _sql(conn.dialect.name)
    keys = {"wa_id": info.wa_id, "user_id": info.user_id}
    for _attempt in range(3):
        found = conn.execute(sql.find_contact, keys).first()
        if found is None:
            new_id = conn.execute(sql.insert_contact, {**keys, "parent_user_id": info.parent_user_id,
                                                       "name": info.name, "username": info.username}).scalar()
            if new_id is not None:
                return new_id
            continue  # another worker created it a moment ago: read it back
        changes = {
            k: v for k, v in (("name", info.name), ("username", info.username)) if v and v != getattr(found, k)
        }
        # Fill in an id the row lacked, unless another contact already holds it.
        if info.wa_id and not found.wa_id and not _taken(conn, Contact.wa_id, info.wa_id):
            changes["wa_id"] = info.wa_id
        if info.user_id and not found.user_id and not _taken(conn, Contact.user_id, info.user_id):
            changes["user_id"] = info.user_id
            changes["parent_user_id"] = info.parent_user_id
        if changes:
            changes["updated_at"] = datetime.now(timezone.utc)
            try:
                with conn.begin_nested():
                    conn.execute(sa.update(Contact).where(Contact.id == found.id).values(**changes))
            except sa.exc.IntegrityError:
                continue  # another worker gave that id to another contact a moment ago: look again
        return found.id
    raise RuntimeError(f"could not create or find contact {info.wa_id or info.user_id}")


def _taken(conn: sa.Connection, column: Any, value: str) -> bool:
    return conn.execute(sa.select(sa.literal(1)).where(column == value)).first() is not None


def upsert_conversation(conn: sa.Connection, contact_id: int, phone_number_id: str,
                        display_phone_number: str | None, inbound_at: datetime | None) -> int:
    """Return the id of the conversation between a contact and a business number."""
    return conn.execute(_sql(conn.dialect.name).upsert_conversation, {
        "contact_id": contact_id, "phone_number_id": phone_number_id,
        "display_phone_number": display_phone_number, "inbound_at": inbound_at,
    }).scalar_one()
