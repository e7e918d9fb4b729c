# The built-in synthetic cohort: HDSCA-like slides with ground truth (active when synthetic.enabled).

rule simulate_slide:
    output:
        slide=synthetic_slide_output(),
        truth_labels=directory(f"{SYNTHETIC_DIR}/{{slide}}/truth_labels.zarr"),
        truth_cells=f"{SYNTHETIC_DIR}/{{slide}}/truth_cells.parquet",
    params:
        synthetic=config["synthetic"],
        sample=lambda wildcards: sample(wildcards.slide).to_dict(),
        frames=config["frames"],
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.truth_cells)),
        version=stage_version("simulate"),
    log:
        f"{RESULTS}/logs/simulate/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{slide}}.tsv"
    # frames rendered on that many worker processes, written in frame order (outputs byte-identical)
    threads: config["threads"]["simulate"]
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/simulate_slide.py"


rule synthetic_cohort:
    input:
        truth_cells=expand(f"{SYNTHETIC_DIR}/{{slide}}/truth_cells.parquet", slide=SLIDES),
    output:
        truth_cells=f"{SYNTHETIC_DIR}/truth_cells.parquet",
        samples=f"{SYNTHETIC_DIR}/samples.tsv",
    params:
        samples=SAMPLES.reset_index(drop=True).to_dict(orient="list"),
        version=stage_version("simulate"),
    log:
        f"{RESULTS}/logs/simulate/cohort.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/synthetic_cohort.py"
