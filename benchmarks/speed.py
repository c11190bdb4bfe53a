"""Speed of every mixer on this machine: the ``seqmix speed`` command, runnable from a checkout.

    python benchmarks/speed.py                                  # = seqmix speed
    python benchmarks/speed.py --mixers mamba,lstm --seq_lens [256,1024] --out results/speed
    python benchmarks/speed.py --quick                          # smoke run at toy sizes

See ``seqmix speed --help`` for every flag; the library behind it is ``seqmix.bench.speed``.
"""

from __future__ import annotations

import sys

from seqmix.cli import main

if __name__ == "__main__":
    main(["speed", *sys.argv[1:]])
