# Builds the demo dataset (resources/demo) from the GRID clips in data/grid.
# Run with `make demo`, or: snakemake -s workflow/demo.smk --cores 1
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent / "src"))


rule build_demo_dataset:
    input:
        clips=sorted(str(p) for p in (Path(workflow.basedir).parent / "data" / "grid").glob("*.mpg")),
    output:
        dataset=directory("resources/demo"),
    params:
        source=lambda wildcards, input: str(Path(input.clips[0]).parent),
        seed=0,
    log:
        "resources/logs/build_demo_dataset.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/media.yaml"
    script:
        "scripts/build_demo_dataset.py"
