"""Child process of test_crash: writes 3-turn episodes forever, acknowledging each one.

Prints "BEGIN <id>" once the running episode row is committed and "ACK <id> <i>" once
finish_episode returned. The parent kill -9s it at an arbitrary point.
"""

from __future__ import annotations

import sys
import time

from collm_serve.traces.store import TraceStore
from tests.traces.helpers import make_episode, make_turn

TURNS, TOKENS = 3, 1500


def main(path: str, pause_s: float) -> None:
    store = TraceStore(path)
    i = 0
    while True:
        eid = store.begin_episode(make_episode(problem_id=f"p{i}", seed=i))
        print("BEGIN", eid, flush=True)
        parent = None
        for d in range(TURNS):
            parent = store.append_turn(eid, make_turn(d, parent, 10 * i + d, n_tokens=TOKENS))
            time.sleep(pause_s)
        store.finish_episode(eid, "ok", float(i))
        print("ACK", eid, i, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
