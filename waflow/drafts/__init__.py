"""The AI reply-draft pipeline: a client writes, a draft is made, a lawyer decides, the approved words are sent.

- ``requests``: core asks for a draft in the client message's own transaction (one waiting request
  per conversation, its due time pushed by each new message).
- ``drafter``: the stage on ``wa.ai.draft.requested``: claims a due request, drafts with
  ``waflow.drafting``, stores the draft, publishes ``wa.ai.draft.created``; ``sweep`` finds work whose
  publish was lost and queues it again (a timer in the drafter worker).
- ``announcer``: the stage on ``wa.ai.draft.created``: records each ready or failed draft in the change
  log (``waflow.changelog``) that the dashboard reads.
- ``decisions``: what a person does (approve, edit and approve, approve a template, reject, write by
  hand, ask for a new draft): the plain functions the CLI and the dashboard call.
- ``sending``: core's side of ``wa.ai.draft.approved``: an approval handed to the sender's command API.
- ``stale``: a reply that reaches the client another way makes the open draft stale.
- ``queries``: drafts as the CLI and the dashboard show them; ``audit``: sends against their approvals.
- ``publish``: how each step hands the next one its ids (by task name, after the commit).

This package's ``__init__`` imports nothing: the sender imports ``stale`` without pulling in the rest.
"""
