# labels.zarr + image.zarr + preprocessed.zarr -> cells.parquet (one row per cell), patches.zarr
# (N x C x P x P, row order = cells.parquet) and clusters.parquet (cell-cell clusters), tile by tile.


rule extract:
    input:
        labels=f"{RESULTS}/{{slide}}/labels.zarr",
        image=f"{RESULTS}/{{slide}}/image.zarr",
        preprocessed=f"{RESULTS}/{{slide}}/preprocessed.zarr",
    output:
        cells=f"{RESULTS}/{{slide}}/cells.parquet",
        patches=directory(f"{RESULTS}/{{slide}}/patches.zarr"),
        clusters=f"{RESULTS}/{{slide}}/clusters.parquet",
    params:
        extract=config["extract"],
        gating=config["gating"],
        version=stage_version("extract"),
    log:
        f"{RESULTS}/logs/extract/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{slide}}.tsv"
    threads: config["threads"]["extract"]
    resources:
        # measured peak 365 MB with 512 px tiles (flat in the number of cells); the halo window and its
        # chunk cache grow with the tile's area
        mem_mb=1000 + config["tile"]["size"] ** 2 * 600 // 2**20,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/extract.py"
