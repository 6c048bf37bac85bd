"""``imagesvc up``: run the API, a worker and the scheduler, and stop them together.

Ctrl-C (SIGINT to the terminal's whole process group) and SIGTERM are the supervisor's
alone: it starts its children with SIGINT ignored (a Python started so raises no
KeyboardInterrupt, wherever its start-up is; the worker and the scheduler keep ignoring
it), and stops each of them with one SIGTERM: the worker's warm shutdown, the API's
graceful stop. A stop asked for before the children start (during the schema upgrade)
starts none of them.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0


class Supervisor:
    """Starts child processes; when one exits or we are signalled, stops them all."""

    def __init__(self, commands: dict[str, Sequence[str]]) -> None:
        self._commands = commands
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """Whether SIGINT or SIGTERM came since :meth:`listen`."""
        return self._stopping

    def listen(self) -> None:
        """From now on SIGINT and SIGTERM ask for a stop instead of interrupting."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def run(self) -> int:
        self.listen()
        for name, argv in self._commands.items():
            if self._stopping:
                break
            self._children[name] = subprocess.Popen(
                [sys.executable, "-m", "imagesvc", *argv], preexec_fn=_ignore_sigint
            )
            log.debug("started %s (pid %d)", name, self._children[name].pid)
        code = self._watch()
        self._stop_all()
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _watch(self) -> int:
        while not self._stopping:
            for name, child in self._children.items():
                # A child gone while we stop is part of the stop, not a failure.
                if child.poll() is not None and not self._stopping:
                    log.error("%s exited with code %s; stopping the rest", name, child.returncode)
                    return child.returncode or 1
            time.sleep(0.2)
        return 0

    def _stop_all(self) -> None:
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, child in self._children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
                child.kill()
                child.wait()


def _ignore_sigint() -> None:
    """In the child, before it runs ``imagesvc``: Ctrl-C is the supervisor's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
