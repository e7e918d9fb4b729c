# preprocessed.zarr -> labels.zarr: cell segmentation tile by tile (halo, slide-wide ids).
#
# GPU rule: with segment.backend cellpose this is the one stage that wants a GPU. Profiles map it by
# its name, `segment` (profiles/slurm: GPU partition and a gpu request); config holds no resources.

from hemoprofile.segment.cellpose_model import is_model_file as is_cellpose_model_file


# A Cellpose model file is an input, so retraining or replacing the model reruns segmentation; built-in names
# are not files. The bundled model (bundled:hemoprofile_cellpose, the default) is the installed package's
# file (common.smk's model_input); a relative segment.model missing from the working directory is the
# checkout's (common.smk's checkout_path, against workflow.basedir).
SEGMENT_MODEL = (
    [model_input(config["segment"]["model"], "segment.model")]
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
        pyramid=config["pyramid"],
        version=stage_version("segment"),
    log:
        f"{RESULTS}/logs/segment/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{slide}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/segment.py"
