# Single-cell collections: sample-sheet rows with source 'collection' (a folder of crops per patient).
# ingest_collection: folder -> cells.parquet + patches.zarr + qc.csv/qc.parquet (every file checked; the
# unusable ones skipped and listed); classify_collection: patches -> predictions.parquet with the
# classifier of the row's modality (collection.models; the bundled pbc8 for 'smear'). From there the
# rows join the slides in aggregate_patients. collection_demo_patient / collection_demo_sheet generate the
# demo cohort of config/collections.yaml. COLLECTIONS, COLLECTION, collection_model and
# collection_outputs live in common.smk.

# a collection row's cells.parquet / patches.zarr / predictions.parquet come from these rules, not from
# extract / classify (whose wildcard also matches every row)
ruleorder: ingest_collection > extract
ruleorder: classify_collection > classify


rule ingest_collection:
    input:
        folder=lambda wildcards: sample(wildcards.slide)["path"],
        model=collection_model,
    output:
        cells=f"{RESULTS}/{{slide}}/cells.parquet",
        patches=directory(f"{RESULTS}/{{slide}}/patches.zarr"),
        qc=report(f"{RESULTS}/{{slide}}/qc.csv", category="Collections", labels={"collection": "{slide}"}),
        qc_parquet=f"{RESULTS}/{{slide}}/qc.parquet",
    params:
        collection={k: v for k, v in COLLECTION.items() if k not in ("device", "batch_size", "tta")},
        version=COLLECTION_VERSION,
    wildcard_constraints:
        slide="|".join(COLLECTIONS) or "$^",
    log:
        f"{RESULTS}/logs/ingest_collection/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_collection/{{slide}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ingest_collection.py"


rule classify_collection:
    input:
        patches=f"{RESULTS}/{{slide}}/patches.zarr",
        cells=f"{RESULTS}/{{slide}}/cells.parquet",
        model=collection_model,
    output:
        predictions=f"{RESULTS}/{{slide}}/predictions.parquet",
    params:
        device=COLLECTION["device"],
        batch_size=COLLECTION["batch_size"],
        tta=COLLECTION["tta"],
        mixed_precision=CLASSIFY["mixed_precision"],
        version=stage_version("classify"),
    wildcard_constraints:
        slide="|".join(COLLECTIONS) or "$^",
    log:
        f"{RESULTS}/logs/classify/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify/{{slide}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/classify_collection.py"


rule collection_demo_patient:
    output:
        images=directory(f"{COLLECTION_DEMO_DIR}/{{slide}}/images"),
        truth=f"{COLLECTION_DEMO_DIR}/{{slide}}/truth.csv",
    params:
        demo=config["collection_demo"],
        row=lambda wildcards: sample(wildcards.slide).to_dict(),
        index=lambda wildcards: ROWS.index(wildcards.slide),
        version=stage_version("ingest"),
    log:
        f"{RESULTS}/logs/collection_demo/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/collection_demo_patient.py"


rule collection_demo_sheet:
    output:
        samples=f"{COLLECTION_DEMO_DIR}/samples.tsv",
    params:
        samples=SAMPLES.reset_index(drop=True)[["slide", "patient", "condition", "path", "source"]].to_dict(orient="list"),
    log:
        f"{RESULTS}/logs/collection_demo/samples.log",
    threads: 1
    resources:
        mem_mb=500,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/collection_demo_sheet.py"
