"""The sender stage: consumes ``wa.outgoing.command`` (replies) and ``wa.outgoing.broadcast`` (bulk).

- ``commands``: the one API everything that sends calls (CLI, core, drafts, dashboard):
  store a message under an idempotency key, then queue its send task on its lane.
- ``broadcast``: one template to every recipient of a CSV file, resumable, cancellable.
- ``claim``: whether a queued message goes now; ``sending`` if so.
- ``settle``: Meta's answer recorded, and what happens next; status webhooks settle doubts.
- ``operator``: a person settles a send in doubt, or reopens a dead-lettered one.
- ``outbox``: the ``outbound_messages`` statements those share, and Meta's waits.
- ``warmup``: what a sender opens before its first message.
- ``task``: ``send_message``, one attempt at one message, at most once.

Every module is imported here, eagerly: the send path's statements are registered as
PostgreSQL prepared statements (``db.prepared``) when their modules are imported, before
any connection of the autocommit engine opens, and the warm-up's signal handlers connect.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 3.2.
"""
from waflow.outbound import broadcast, claim, commands, operator, outbox, settle, task, warmup  # noqa: F401
