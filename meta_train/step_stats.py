"""``python -m meta_train.step_stats [options]`` is ``python -m meta_train step-stats [options]``: the name that
older experiment notes use. The code is in ``meta_train/pipelines/step_stats.py``."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    main(["step-stats", *sys.argv[1:]])
