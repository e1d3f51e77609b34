"""Subprocess driver for trainer tests: trains with overrides and can kill or signal itself.

    python tests/train_driver.py KILL_AT SIGNAL -- override ...
KILL_AT: step after which to send SIGNAL to itself (0 = never); SIGNAL: KILL or TERM.
"""

import os
import signal
import sys

import torch

torch.set_num_threads(1)

from hrm_text.config import load_config  # noqa: E402
from hrm_text.train.trainer import train  # noqa: E402


def main() -> None:
    kill_at, sig = int(sys.argv[1]), sys.argv[2]
    overrides = sys.argv[sys.argv.index("--") + 1 :]
    cfg = load_config(None, overrides)

    def on_step(step: int, loss: float) -> None:
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL if sig == "KILL" else signal.SIGTERM)

    res = train(cfg, resume="auto", on_step=on_step, progress=False)
    print(f"DONE steps={res.steps} interrupted={res.interrupted}", flush=True)


if __name__ == "__main__":
    main()
