"""Dead letters: what could not be processed, kept for a person (queue ``wa.dead_letter``).

- ``records``: the dead-letter record of a failure and its publish (used by the failure handler
  in ``waflow.tasks`` and by stages that set input aside), and the redelivery count.
- ``recorder``: the stage that consumes ``wa.dead_letter`` into the ``dead_letters`` table
  (``flask --app wsgi dlq record``, the Procfile's ``deadletter`` line).
- ``tooling``: find, replay and purge, behind the ``flask --app wsgi dlq`` commands.

Design: ``../shared/seed/event-bus-async-workflow.en.md`` section 4; ``docs/reliability.md``.
"""
