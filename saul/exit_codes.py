"""Exit codes of a rank/stage: the contract that tells the requeue path what to do next.

Kept small and explicit, like sysexits: anything not listed is an unexpected crash (retry
within the failure budget).
"""
DONE = 0  # stage finished: nothing left to do
CONFIG_ERROR = 2  # user/config error (bad key, missing data, shape mismatch): never retry
STOPPED = 75  # EX_TEMPFAIL: stopped on request (signal, time limit, stop_after_steps) after a checkpoint: resume me
NO_RETRY = 93  # a failure that another attempt cannot fix (same meaning as nvidia-resiliency-ext's 93)

RETRYABLE = {STOPPED}
NEVER_RETRY = {CONFIG_ERROR, NO_RETRY}
