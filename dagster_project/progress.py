"""A Dagster logger that prints one line per finished step and check: the progress of `kalm run`."""

from __future__ import annotations

import logging
import signal
import sys
import time

import dagster as dg

_SHOWN = {"STEP_SUCCESS": "ok  ", "STEP_FAILURE": "FAIL", "STEP_SKIPPED": "skip"}


INTERRUPTS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt", "InterruptException")  # Dagster's, DuckDB's


def is_interrupt(error) -> bool:
    """Whether a step's error (or any error in its chain) is a Ctrl-C."""
    while error is not None:
        if error.cls_name in INTERRUPTS:
            return True
        error = error.cause or error.context
    return False


def _root_cause(error) -> str:
    """The innermost error's message: the one our code raised, not Dagster's wrapper."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


class _ProgressHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.done = 0
        self.t0 = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is None:
            from assets.resources import INTERRUPTED

            if record.levelno >= logging.ERROR and INTERRUPTED.is_set():
                return  # after Ctrl-C: "dependencies failed, not executing" for every later step says nothing new
            if record.levelno >= logging.ERROR:
                print(f"  error: {record.getMessage().splitlines()[0]}", file=sys.stderr, flush=True)
            elif record.levelno >= logging.INFO:  # an asset's own context.log lines (training progress, counts)
                print(f"        {record.getMessage().split(' - ')[-1]}", flush=True)
            return
        kind = event.event_type_value
        if kind == "LOGS_CAPTURED":  # the capture's child processes exist: Ctrl-C may reach us now (runner.py)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if kind in _SHOWN:
            self.done += 1
            elapsed = time.monotonic() - self.t0
            print(f"  [{self.done:3d}] {_SHOWN[kind]} {event.step_key:<40s} {elapsed:7.1f}s", flush=True)
            if kind == "STEP_FAILURE" and event.step_failure_data and event.step_failure_data.error:
                error = event.step_failure_data.error
                if is_interrupt(error):  # Ctrl-C: no later step starts (assets/resources.py)
                    from assets.resources import INTERRUPTED

                    INTERRUPTED.set()
                    print("         interrupted (Ctrl-C)", file=sys.stderr, flush=True)
                else:
                    print(f"         {_root_cause(error)}", file=sys.stderr, flush=True)
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            if not data.passed:
                print(f"        check failed: {data.asset_key.to_user_string()} {data.check_name}", flush=True)


@dg.logger(description="One line per finished step and failed check.")
def progress_logger(_init_context) -> logging.Logger:
    log = logging.getLogger("kalm.progress")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    if not log.handlers:
        log.addHandler(_ProgressHandler())
    return log


@dg.logger(description="Errors only.")
def quiet_logger(_init_context) -> logging.Logger:
    log = logging.getLogger("kalm.quiet")
    log.setLevel(logging.ERROR)
    return log
