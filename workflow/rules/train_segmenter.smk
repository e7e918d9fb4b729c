# Train the project's own Cellpose segmentation model from scratch (DSB 2018 nuclei + synthetic slides).
#
# Not among `rule all`'s targets: the demo segments with the bundled model (models/segmentation/). Run
#   snakemake --profile profiles/default train_segmenter
# and point segment.model at models/trained/segmenter.pt to use the result. A GPU rule when one is
# present (profiles map it by its name); on CPU keep train_segmenter.threads at 1 on shared machines.

from hemoprofile.segmentation_training import TRAINING_VERSION as SEGMENTER_TRAINING_VERSION


rule train_segmenter:
    input:
        dsb_index=f"{config['train_segmenter']['dsb_dir']}/index.csv",
        init_model=[config["train_segmenter"]["init_model"]] if config["train_segmenter"].get("init_model") else [],
    output:
        model="models/trained/segmenter.pt",
        sidecar="models/trained/segmenter.pt.json",
        metrics="models/trained/segmenter_metrics.json",
        split="models/trained/dsb2018_split.json",
        work=temp(directory(f"{RESULTS}/train_segmenter")),
    params:
        train=config["train_segmenter"],
        synthetic=config["synthetic"],
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
