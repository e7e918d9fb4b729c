# Cell classifiers. train_classifier: the cohort's labelled cells -> results/models/classifier_<task>.pt
# + .metrics.json (held out by patient); classify: patches.zarr -> predictions.parquet per slide.
#
# GPU rules: profiles map `train_classifier` and `classify` by name to GPU resources; with no GPU both
# run on the CPU (device auto), the same code path. A model file named in classify.models[<task>] is
# used as is and that task is not trained. CLASSIFY, CLASSIFY_TASKS, CLASSIFY_VERSION and the input
# functions classifier_model / classifier_training_inputs / classifier_outputs live in common.smk.

rule train_classifier:
    input:
        unpack(classifier_training_inputs),
    output:
        model=f"{RESULTS}/models/classifier_{{task}}.pt",
        metrics=report(
            f"{RESULTS}/models/classifier_{{task}}.metrics.json",
            category="Classifiers",
            labels={"task": "{task}"},
        ),
    params:
        # all but what only inference uses, so adding a task or changing the inference batch retrains nothing
        classify={k: v for k, v in CLASSIFY.items() if k not in ("tasks", "models", "batch_size")},
        slides=SLIDES,
        groups=lambda wildcards: {s: str(sample(s)["patient"]) for s in SLIDES},
        seed=config["seed"],
        version=CLASSIFY_VERSION,
    wildcard_constraints:
        task="lineage|immune5|immune6|ctc|hierarchical",
    log:
        f"{RESULTS}/logs/train_classifier/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_classifier/{{task}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/train_classifier.py"


rule classify:
    input:
        patches=f"{RESULTS}/{{slide}}/patches.zarr",
        cells=f"{RESULTS}/{{slide}}/cells.parquet",
        models=[classifier_model(task) for task in CLASSIFY_TASKS],
    output:
        predictions=f"{RESULTS}/{{slide}}/predictions.parquet",
    params:
        device=CLASSIFY["device"],
        mixed_precision=CLASSIFY["mixed_precision"],
        batch_size=CLASSIFY["batch_size"],
        tta=CLASSIFY["tta"],
        version=CLASSIFY_VERSION,
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
        "../scripts/classify.py"
