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

# The science of segmentation, without the job split (segment.shards changes how, not what: labels are
# equal), so switching shards does not rerun a slide's segmentation.
SEGMENT_PARAMS = {key: value for key, value in config["segment"].items() if key != "shards"}


rule segment:
    input:
        image=f"{RESULTS}/{{slide}}/preprocessed.zarr",
        model=SEGMENT_MODEL,
    output:
        labels=directory(f"{RESULTS}/{{slide}}/labels.zarr"),
    params:
        segment=SEGMENT_PARAMS,
        seed=config["seed"],
        pyramid=config["pyramid"],
        version=stage_version("segment"),
    log:
        f"{RESULTS}/logs/segment/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{slide}}.tsv"
    # classical: windows segmented on that many threads (labels bitwise equal); cellpose: torch's threads
    threads: config["threads"]["segment"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/segment.py"


# --- segment.shards > 1: N shard jobs (GPU rule segment_shard) + one stitch job (CPU) -----------------
# Each shard segments a contiguous range of tiles (with their halo) into a block store that survives a
# killed job (hemoprofile.segment.shards: finished blocks are committed to a ledger and skipped on the
# rerun; the store is not a declared output, since Snakemake deletes an incomplete job's outputs). The
# declared output is the shard's summary; segment_stitch lists all N of them, stitches the stored
# windows with the one-job stitcher (labels equal the one-job run's) and removes the stores. Both
# segment and segment_stitch write labels.zarr; the ruleorder picks one by segment.shards.

SEGMENT_SHARDS = int(config["segment"]["shards"])
SEGMENT_SHARD_DIR = f"{RESULTS}/{{slide}}/segment_shards"

if SEGMENT_SHARDS > 1:

    ruleorder: segment_stitch > segment

else:

    ruleorder: segment > segment_stitch


rule segment_shard:
    input:
        image=f"{RESULTS}/{{slide}}/preprocessed.zarr",
        model=SEGMENT_MODEL,
    output:
        summary=temp(f"{SEGMENT_SHARD_DIR}/{{shard}}-of-{SEGMENT_SHARDS}.json"),
    params:
        store=lambda wildcards: f"{RESULTS}/{wildcards.slide}/segment_shards/{wildcards.shard}-of-{SEGMENT_SHARDS}.blocks",
        shards=SEGMENT_SHARDS,
        segment=SEGMENT_PARAMS,
        seed=config["seed"],
        version=stage_version("segment"),
    wildcard_constraints:
        shard=r"\d+",
    log:
        f"{RESULTS}/logs/segment_shard/{{slide}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment_shard/{{slide}}/{{shard}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/segment_shard.py"


rule segment_stitch:
    input:
        image=f"{RESULTS}/{{slide}}/preprocessed.zarr",
        shards=expand(f"{SEGMENT_SHARD_DIR}/{{shard}}-of-{SEGMENT_SHARDS}.json", shard=range(SEGMENT_SHARDS),
                      allow_missing=True),
    output:
        labels=directory(f"{RESULTS}/{{slide}}/labels.zarr"),
    params:
        segment=SEGMENT_PARAMS,
        seed=config["seed"],
        pyramid=config["pyramid"],
        version=stage_version("segment"),
    log:
        f"{RESULTS}/logs/segment_stitch/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment_stitch/{{slide}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/segment_stitch.py"
