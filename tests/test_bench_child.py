"""LinkedChild: a spawned helper with a pipe, stopped by word, killed if it will not go."""

from __future__ import annotations

import signal
import time
from multiprocessing.connection import Connection

from qwen_sse.bench.child import STOP, LinkedChild
from qwen_sse.bench.stop import leave_signals_to_parent


def echo_until_stopped(link: Connection, prefix: bytes) -> None:
    leave_signals_to_parent()
    with link:
        while (message := link.recv_bytes()) != STOP:
            link.send_bytes(prefix + message)


def deaf(link: Connection) -> None:
    # Reads nothing and ignores SIGTERM, as a wedged child would.
    leave_signals_to_parent()
    link.send_bytes(b"up")
    while True:
        time.sleep(1)


def test_a_child_answers_over_its_link_and_stops_when_told() -> None:
    child = LinkedChild(echo_until_stopped, (b"echo: ",), name="qwen-sse-test-echo")
    assert child.link is None
    assert child.pid is None
    link = child.start()
    assert child.link is link
    link.send_bytes(b"hello")
    assert link.poll(60)
    assert link.recv_bytes() == b"echo: hello"
    process = child.process
    assert process is not None
    assert process.name == "qwen-sse-test-echo"
    assert child.pid == process.pid
    child.close()
    # It finished on the word (exit status 0), not by a kill.
    assert process.exitcode == 0
    assert child.link is None
    assert child.process is None
    child.close()  # idempotent


def test_a_child_that_does_not_stop_is_killed() -> None:
    child = LinkedChild(deaf, (), name="qwen-sse-test-deaf")
    link = child.start()
    assert link.poll(60)
    assert link.recv_bytes() == b"up"
    process = child.process
    assert process is not None
    child.close()
    assert process.exitcode == -signal.SIGKILL
