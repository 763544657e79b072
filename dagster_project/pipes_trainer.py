"""The trainer as the training asset launches it: `python -m kalm_core.trainer` inside a Dagster Pipes session.

Rank 0 (the only process outside torchrun, or torchrun's first worker) reports to the Dagster run: every record as a
Pipes custom message (the asset builds the loss curve and the summary from them), a step line in the run's log at
most every 5 s (and the first and last), and the failure's message; other ranks train silently. Kept out of
kalm_core, which stays free of Dagster.
"""

from __future__ import annotations

import json
import os
import sys
import time

from kalm_core import trainer


CANCELLED = 130  # the shell's exit status for a process stopped by SIGINT


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a cancelled run (Pipes forwards SIGINT): one line, not a traceback per rank
        print(f"trainer rank {os.environ.get('RANK', '0')}: cancelled; a later run with the same batches and "
              "settings resumes from its last checkpoint, if one was written", file=sys.stderr)
        return CANCELLED


def _main(argv: list[str] | None) -> int:
    if os.environ.get("RANK", "0") != "0" or not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        return trainer.main(argv)  # the trainer logs on rank 0 only
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        last = [0.0]

        def log(record: dict) -> None:
            pipes.report_custom_message(record)
            if record["event"] != "step":
                pipes.log.info(json.dumps(record))
            elif time.monotonic() - last[0] > 5 or record["step"] in (1, record["total"]):
                pipes.log.info(f"step {record['step']}/{record['total']} loss {record['loss']:.4f} "
                               f"{record['pairs_per_s']:.1f} pairs/s {record['tokens_per_s']:,.0f} tokens/s")
                last[0] = time.monotonic()

        return trainer.main(argv, log=log, report_error=pipes.log.error)


if __name__ == "__main__":
    sys.exit(main())
