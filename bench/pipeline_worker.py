"""``imagesvc worker`` for the pipeline bench, with its unacknowledged messages under keys
named after its queue.

``python -m bench.pipeline_worker --concurrency N`` runs ``imagesvc worker --concurrency N``
itself (the same command, settings, tasks and pool), with one change, in names only, the one
the bare worker has (``bench.bare_celery``): kombu keeps the worker's unacknowledged messages
under keys named after its queue rather than Redis's shared ``unacked``, so that the bench can
tell when every message it sent has been consumed and acknowledged. It has to: a message's
statement also settles other pending jobs (a group commit), so the jobs are all settled while
messages are still queued, and the run ends, as the bare side's, when the broker holds none.
"""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import celeryd_init

from bench.bare_celery import queue_unacked_options
from imagesvc.cli import main as imagesvc_main
from imagesvc.settings import Settings


def _name_unacked_after_the_queue(conf: Any = None, **_: Any) -> None:
    """Before the worker connects to the broker: its transport options name the keys."""
    options = dict(conf.broker_transport_options or {})
    conf.broker_transport_options = options | queue_unacked_options(Settings().queue)


def main(argv: list[str]) -> int:
    celeryd_init.connect(_name_unacked_after_the_queue, weak=False)
    return imagesvc_main(["worker", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
