# Unsupervised latent space (hemoprofile.embed): train_embedder trains a VAE or conditional VAE on a
# per-slide sample of every slide's patches and fits the 2-D map (PCA) and the latent clusters on it, once, so
# map coordinates and cluster ids agree across slides; embed writes results/<slide>/embedding.parquet;
# embedding_figures draws the cohort's maps and reconstructions and scores the clustering;
# clusters_by_condition tabulates the latent clusters by condition (cells, shares, tests, medoids).
#
# GPU rules: profiles map `train_embedder` and `embed` by name to GPU resources; with no GPU both run on
# the CPU (embed.device auto), the same code path. The figures colour the map by predicted class when
# embed.figures.colour_by_prediction is on. EMBED*, embed_sheet, embed_cohort_inputs and
# embedding_figure_outputs live in common.smk.
rule train_embedder:
    input:
        unpack(embed_cohort_inputs),
    output:
        model=f"{RESULTS}/models/embedder.pt",
        metrics=report(f"{RESULTS}/models/embedder.metrics.json", category="Embedding"),
    params:
        # all but what only inference and figures use, so changing those retrains nothing
        embed={k: v for k, v in EMBED.items() if k not in ("batch_size", "figures", "conditions")},
        slides=SLIDES,
        sheet=lambda wildcards: {s: embed_sheet(s) for s in SLIDES},
        seed=config["seed"],
        version=EMBED_VERSION,
    log:
        f"{RESULTS}/logs/train_embedder.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_embedder.tsv"
    # the VAE is the longest training job and embed, interaction and the patient stages wait on it:
    # started first, it trains beside the classifiers instead of after two of them
    priority: 10
    threads: 2
    resources:
        mem_mb=8000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/train_embedder.py"


rule embed:
    input:
        model=f"{RESULTS}/models/embedder.pt",
        patches=f"{RESULTS}/{{slide}}/patches.zarr",
        cells=f"{RESULTS}/{{slide}}/cells.parquet",
    output:
        embedding=f"{RESULTS}/{{slide}}/embedding.parquet",
    params:
        sheet=lambda wildcards: embed_sheet(wildcards.slide),
        condition_on=EMBED.get("condition_on", "none"),
        device=EMBED.get("device", "auto"),
        mixed_precision=EMBED.get("mixed_precision", True),
        batch_size=EMBED.get("batch_size", 1024),
        version=EMBED_VERSION,
    log:
        f"{RESULTS}/logs/embed/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{slide}}.tsv"
    threads: config["threads"]["embed"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/embed.py"


rule embedding_figures:
    input:
        unpack(embed_cohort_inputs),
        model=f"{RESULTS}/models/embedder.pt",
        embeddings=expand(f"{RESULTS}/{{slide}}/embedding.parquet", slide=SLIDES),
        predictions=expand(f"{RESULTS}/{{slide}}/predictions.parquet", slide=SLIDES) if EMBED_PREDICTIONS else [],
    output:
        **{
            key: report(path, category="Embedding", labels={"figure": key})
            for key, path in embedding_figure_outputs().items()
        },
        metrics=f"{EMBED_FIGURES}/metrics.json",
    params:
        embed={k: v for k, v in EMBED.items() if k != "conditions"},
        slides=SLIDES,
        sheet=lambda wildcards: {s: embed_sheet(s) for s in SLIDES},
        seed=config["seed"],
        version=EMBED_VERSION,
    log:
        f"{RESULTS}/logs/embedding_figures.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/embedding_figures.py"


rule clusters_by_condition:
    input:
        embeddings=expand(f"{RESULTS}/{{slide}}/embedding.parquet", slide=SLIDES),
    output:
        table=f"{EMBED_FIGURES}/clusters_by_condition.parquet",
    params:
        settings=EMBED.get("conditions", {}),
        slides=SLIDES,
        sheet=lambda wildcards: {s: embed_sheet(s) for s in SLIDES},
        version=EMBED_VERSION,
    log:
        f"{RESULTS}/logs/clusters_by_condition.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/clusters_by_condition.py"
