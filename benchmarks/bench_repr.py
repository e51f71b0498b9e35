"""The representation benchmark, as `make bench-repr` runs it: `musetok bench-repr` with the real-music
dev kit when it is there ($DEV_DATA, else ~/musetok-dev-data; build it with ../shared/data/make_dev_data.sh).

    .venv/bin/python benchmarks/bench_repr.py [--out bench-out/repr] [--quick] [any bench-repr option]

The default run takes about 55 minutes on 2 cores with AMX (bf16) and about 85 on 2 AVX2 cores without it (fp32;
both suites, three priors of 2000 steps: the `small` configs).
"""

import os
import sys
from pathlib import Path

from musetok.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    data = Path(os.environ.get("DEV_DATA", Path.home() / "musetok-dev-data"))
    if "--data" not in args and (data / "music" / "manifest.csv").is_file() and (data / "notes").is_dir():
        args += ["--data", str(data)]
    sys.exit(main(["bench-repr", *args]))
