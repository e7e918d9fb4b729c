# Train the project's own Cellpose segmentation model (DSB 2018 nuclei + synthetic training slides).
# Also: rule finetune_segmenter (below), fine-tuning on your own annotated folders.
#
# Not among `rule all`'s targets: the demo segments with the bundled model (bundled:hemoprofile_cellpose). Set
# train_segmenter.dsb_dir to the DSB 2018 fluorescence folder, then run
#   snakemake --profile profiles/default train_segmenter
# It writes {results}/models/segmenter/segmenter.pt (+ .pt.json sidecar, metrics, DSB split); point
# segment.model at that file to use it. A GPU rule when one is present (profiles map it by its name); on
# CPU keep train_segmenter.threads at 1 on shared machines.

from hemoprofile.segment.training.train import TRAINING_VERSION as SEGMENTER_TRAINING_VERSION

SEGMENTER_TRAINING_DIR = f"{RESULTS}/train_segmenter"
SEGMENTER_MODEL_DIR = f"{RESULTS}/models/segmenter"
# The synthetic training cohort's sheet; none when train_segmenter.synthetic_weight is 0 (DSB only).
SEGMENTER_COHORT = (
    f"{SEGMENTER_TRAINING_DIR}/synthetic/cohort.tsv" if config["train_segmenter"]["synthetic_weight"] > 0 else None
)


# The synthetic training slides: the simulate stage's cohort with the training seed (never the demo's).
rule simulate_segmenter_training:
    output:
        cohort=f"{SEGMENTER_TRAINING_DIR}/synthetic/cohort.tsv",
        slides=directory(f"{SEGMENTER_TRAINING_DIR}/synthetic/slides"),
    params:
        synthetic=config["synthetic"],
        train=config["train_segmenter"],
        version=stage_version("simulate"),
    log:
        f"{RESULTS}/logs/train_segmenter/simulate.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter/simulate.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/simulate_segmenter_training.py"


rule train_segmenter:
    input:
        dsb_index=segmenter_dsb_index,
        cohort=[SEGMENTER_COHORT] if SEGMENTER_COHORT else [],
        init_model=[model_input(config["train_segmenter"]["init_model"], "train_segmenter.init_model")]
        if config["train_segmenter"].get("init_model")
        else [],
    output:
        model=f"{SEGMENTER_MODEL_DIR}/segmenter.pt",
        sidecar=f"{SEGMENTER_MODEL_DIR}/segmenter.pt.json",
        metrics=f"{SEGMENTER_MODEL_DIR}/segmenter_metrics.json",
        split=f"{SEGMENTER_MODEL_DIR}/dsb2018_split.json",
        work=temp(directory(f"{SEGMENTER_TRAINING_DIR}/work")),
    params:
        train=config["train_segmenter"],
        segment=config["segment"],
        version={"stage": "train_segmenter", "version": SEGMENTER_TRAINING_VERSION, "package": hemoprofile.__version__},
    log:
        f"{RESULTS}/logs/train_segmenter.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter.tsv"
    threads: config["train_segmenter"]["threads"]
    resources:
        mem_mb=8000,
        runtime=lambda wildcards: int((config["train_segmenter"]["time_budget_min"] or 600) * 1.3) + 30,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/train_segmenter.py"


# Fine-tuning on a lab's own annotated folders (train_segmenter.finetune.folders; README "Teach the
# segmenter your own nuclei"). Not among `rule all`'s targets: run `snakemake finetune_segmenter`, or set
#   segment.model: <results>/models/segmenter/finetuned.pt
# and a plain `snakemake` builds the model first, then reruns segmentation and what follows (the model file
# is an input of rule segment; tile and preprocess are untouched). Only the segment section's channel
# choice is a param here, so pointing segment.model at the output does not retrain it.
from hemoprofile.segment.training.finetune import bundled_segmentation_model

FINETUNE = config["train_segmenter"]["finetune"]
FINETUNE_START = model_input(FINETUNE.get("start_model") or bundled_segmentation_model(), "train_segmenter.finetune.start_model")


rule finetune_segmenter:
    input:
        annotations=finetune_annotation_files,
        start_model=FINETUNE_START,
    output:
        model=f"{SEGMENTER_MODEL_DIR}/finetuned.pt",
        sidecar=f"{SEGMENTER_MODEL_DIR}/finetuned.pt.json",
        metrics=f"{SEGMENTER_MODEL_DIR}/finetuned_metrics.json",
    params:
        train=config["train_segmenter"],
        channels={"channels": config["segment"]["channels"], "marker_min_span": config["segment"]["marker_min_span"]},
        folders=FINETUNE["folders"],
        version={"stage": "finetune_segmenter", "version": SEGMENTER_TRAINING_VERSION, "package": hemoprofile.__version__},
    log:
        f"{RESULTS}/logs/finetune_segmenter.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune_segmenter.tsv"
    threads: config["train_segmenter"]["threads"]
    resources:
        mem_mb=8000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/finetune_segmenter.py"
