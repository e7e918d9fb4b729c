# preprocessed.zarr -> labels.zarr: cell segmentation tile by tile (halo, slide-wide ids).
#
# GPU rule: with segment.backend cellpose this is the one stage that wants a GPU. Profiles map it by
# its name, `segment` (profiles/slurm: GPU partition and a gpu request); config holds no resources.

from hemoprofile.segment.cellpose_model import is_model_file as is_cellpose_model_file


# A Cellpose model file is an input, so retraining the model reruns segmentation; built-in names are not files.
# A relative segment.model missing from the working directory is the checkout's (common.smk's checkout_path,
# against workflow.basedir), so `snakemake -d elsewhere` finds the bundled model.
SEGMENT_MODEL = (
    [config["segment"]["model"]]
    if config["segment"]["backend"] == "cellpose" and is_cellpose_model_file(config["segment"]["model"])
    else []
)


rule segment:
    input:
        image=f"{RESULTS}/{{slide}}/preprocessed.zarr",
        model=SEGMENT_MODEL,
    output:
        labels=directory(f"{RESULTS}/{{slide}}/labels.zarr"),
    params:
        segment=config["segment"],
        seed=config["seed"],
        version=stage_version("segment"),
    log:
        f"{RESULTS}/logs/segment/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{slide}}.tsv"
    # Cellpose runs torch on two threads; the classical backend is single-threaded, so two slides run side by side
    threads: 2 if config["segment"]["backend"] == "cellpose" else 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/segment.py"
