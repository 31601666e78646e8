"""``python -m meta_train.transfer [options]`` is ``python -m meta_train results [options]``: the name that older
docs and the shipped model cards use. The pipeline is in ``meta_train/pipelines/results.py``."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    main(["results", *sys.argv[1:]])
