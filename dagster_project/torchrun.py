"""torchrun (`torch.distributed.run`) as the training asset launches it when `TrainConfig.nproc > 1`.

A cancelled run's SIGINT reaches torchrun, which forwards it to its workers (each says in one line that it stopped,
dagster_project/pipes_trainer.py) and then raises `SignalException` with a traceback of its own agent loop; here that
is one line and the shell's exit status for SIGINT.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

from dagster_project.pipes_trainer import CANCELLED

if __name__ == "__main__":
    try:
        main()
    except SignalException as e:
        print(f"torchrun: cancelled ({e}); its workers stopped", file=sys.stderr)
        sys.exit(CANCELLED)
