# Cell-cell interaction (hemoprofile.interaction), on when interaction.enabled: windows of every slide's
# preprocessed image (centred on touching-cell clusters and at random) with their number of touching cell
# pairs, counted on the ground truth of a synthetic cohort and on the segmentation otherwise; a ridge
# regressor on the VAE latents and a small CNN on the pixels, in patient-grouped folds. One cohort job
# (the windows cost well under a second per slide; a job per slide would mostly load torch).
# INTERACTION*, interaction_inputs, interaction_categories and interaction_outputs live in common.smk.


rule interaction:
    input:
        unpack(interaction_inputs),
    output:
        slides=f"{INTERACTION_DIR}/slides.parquet",
        predictions=report(
            f"{INTERACTION_DIR}/predictions.parquet", category="Interaction", caption="../report/interaction.rst"
        ),
        metrics=report(f"{INTERACTION_DIR}/metrics.json", category="Interaction", caption="../report/interaction.rst"),
        windows=directory(f"{INTERACTION_DIR}/windows"),
    params:
        slides=SLIDES,
        patients=lambda wildcards: {s: str(sample(s)["patient"]) for s in SLIDES},
        categories=lambda wildcards: interaction_categories(),
        settings={k: v for k, v in INTERACTION.items() if k not in ("enabled", "patient_model")},
        halo_px=config["extract"]["max_cell_diameter_px"],
        seed=config["seed"],
        version=INTERACTION_VERSION,
    log:
        f"{RESULTS}/logs/interaction.log",
    benchmark:
        f"{RESULTS}/benchmarks/interaction.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/interaction.py"
