"""An inferencer entry point that hangs after its first heartbeat (``index_refresh.inferencer_fn`` in a test);
a module of its own so the spawned child imports little before it beats."""

import time

from retrieval_lab.negatives.inferencer import beat


def sleep_forever(job) -> None:
    beat(job, "pretending to encode")
    while True:
        time.sleep(60)
