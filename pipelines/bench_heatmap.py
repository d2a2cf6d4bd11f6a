"""Heatmap throughput: end to end and per stage, against the paper's batch-1 fp32 setting.

    .venv/bin/python pipelines/bench_heatmap.py --size 70000x70000 \
        --config configs/haloae-paper.yaml --backbone-weights random          # the GPU target
    .venv/bin/python pipelines/bench_heatmap.py --size 2048x2048 \
        --config configs/tiny.yaml --device cpu --workers 1                    # CPU smoke

Writing the 70k x 70k synthetic slide takes minutes on few cores; `--slide PATH` times an
existing slide instead (any slide works; it is tiled at level 0).

The same command as `wsi-haloae bench heatmap` (same options and errors): prints a Markdown
block (date, machine, command, table) ready for docs/benchmarks.md.
"""

import sys

from wsi_haloae.cli import main

if __name__ == "__main__":
    main(["bench", "heatmap", *sys.argv[1:]])
