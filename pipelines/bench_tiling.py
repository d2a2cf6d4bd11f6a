"""Tile-reading throughput: plain read_region against the streaming reader with 1, 2 and N workers.

    .venv/bin/python pipelines/bench_tiling.py                       # synthetic 8192 x 8192 slide
    .venv/bin/python pipelines/bench_tiling.py slide.svs --workers 1,2,4,N

The same command as `wsi-haloae bench tiling` (same options and errors): prints a Markdown
block (date, machine, command, table) ready for docs/benchmarks.md.
"""

import sys

from wsi_haloae.cli import main

if __name__ == "__main__":
    main(["bench", "tiling", *sys.argv[1:]])
