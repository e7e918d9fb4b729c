# AnnData export (hemoprofile.export), on when anndata.enabled: every slide's cells, predictions and
# latent embedding as <results>/<slide>/cells.h5ad, and the cohort's as <results>/cohort/cells.h5ad, for
# scanpy / squidpy. Written chunk by chunk (anndata.chunk_rows rows at a time), so memory stays flat in
# the number of cells. Only these rules read the anndata keys, so changing them reruns nothing else.
# ANNDATA, EXPORT_VERSION, anndata_outputs (the targets `rule all` adds), export_sheet and export_inputs
# live in common.smk.


rule export_slide_h5ad:
    input:
        unpack(lambda wildcards: export_inputs([wildcards.slide])),
    output:
        h5ad=f"{RESULTS}/{{slide}}/cells.h5ad",
    params:
        slides=lambda wildcards: [wildcards.slide],
        sheet=lambda wildcards: {wildcards.slide: export_sheet(wildcards.slide)},
        chunk_rows=ANNDATA["chunk_rows"],
        compression=ANNDATA["compression"],
        version=EXPORT_VERSION,
    log:
        f"{RESULTS}/logs/export_h5ad/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_h5ad/{{slide}}.tsv"
    threads: 1
    resources:
        # bench/anndata.py: peak RSS ~0.3 GB for a 3 M-cell slide at 65,536 rows per chunk
        mem_mb=1500,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/export_h5ad.py"


rule export_cohort_h5ad:
    input:
        **export_inputs(SLIDES),
    output:
        h5ad=f"{COHORT}/cells.h5ad",
    params:
        slides=SLIDES,
        sheet={s: export_sheet(s) for s in SLIDES},
        chunk_rows=ANNDATA["chunk_rows"],
        compression=ANNDATA["compression"],
        version=EXPORT_VERSION,
    log:
        f"{RESULTS}/logs/export_h5ad/cohort.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_h5ad/cohort.tsv"
    threads: 1
    resources:
        mem_mb=1500,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/export_h5ad.py"
