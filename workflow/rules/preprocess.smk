# image.zarr -> preprocessed.zarr: per-channel percentile clip, normalisation, CLAHE, TV denoising.


rule preprocess:
    input:
        image=f"{RESULTS}/{{slide}}/image.zarr",
    output:
        image=preprocessed_output(),
    params:
        preprocess=config["preprocess"],
        seed=config["seed"],
        version=stage_version("preprocess"),
    log:
        f"{RESULTS}/logs/preprocess/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{slide}}.tsv"
    threads: config["threads"]["preprocess"]
    resources:
        mem_mb=3000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/preprocess.py"
