# CTC candidates and their review (with the ctc classifier task). calibrate_ctc: the ctc classifier's
# held-out patients -> results/models/ctc_calibration.json (candidate threshold for
# ctc.max_false_per_million, calibration, figures on the test patients) + the reliability diagram;
# ctc_candidates: a slide's cells over the threshold -> results/<slide>/candidates.parquet; review_page:
# -> results/<slide>/review.html (a reviewer exports <slide>.csv into the reviews folder); ctc_table:
# candidates + reviews -> results/cohort/ctc_review.tsv (CTCs per million with Poisson intervals).
# CTC_REVIEW, CTC_SLIDES, CTC_CALIBRATION, review_files, ctc_calibration_inputs and ctc_candidate_inputs
# live in common.smk.


rule calibrate_ctc:
    input:
        unpack(ctc_calibration_inputs),
    output:
        calibration=report(CTC_CALIBRATION, category="CTC review"),
        curve=f"{COHORT}/ctc_calibration_curve.tsv",
    params:
        slides=SLIDES,
        patients=lambda wildcards: {s: str(sample(s)["patient"]) for s in SLIDES},
        max_false_per_million=CTC_REVIEW["max_false_per_million"],
        method=CTC_REVIEW["calibration"],
        bins=CTC_REVIEW["reliability_bins"],
        label_source=CLASSIFY["label_source"],
        label_column=CLASSIFY["label_column"],
        version=REVIEW_VERSION,
    log:
        f"{RESULTS}/logs/calibrate_ctc.log",
    benchmark:
        f"{RESULTS}/benchmarks/calibrate_ctc.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/calibrate_ctc.py"


rule ctc_candidates:
    input:
        unpack(ctc_candidate_inputs),
    output:
        candidates=f"{RESULTS}/{{slide}}/candidates.parquet",
    params:
        threshold=CTC_REVIEW["candidate_threshold"],
        gate_column=config["gating"]["column"],
        version=REVIEW_VERSION,
    log:
        f"{RESULTS}/logs/ctc_candidates/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ctc_candidates.py"


rule review_page:
    input:
        candidates=f"{RESULTS}/{{slide}}/candidates.parquet",
        patches=f"{RESULTS}/{{slide}}/patches.zarr",
    output:
        html=report(f"{RESULTS}/{{slide}}/review.html", category="CTC review", labels={"slide": "{slide}"}),
    params:
        max_candidates=CTC_REVIEW["review_page_max"],
        version=REVIEW_VERSION,
    log:
        f"{RESULTS}/logs/review_page/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/review_page.py"


rule ctc_table:
    input:
        cells=expand(f"{RESULTS}/{{slide}}/cells.parquet", slide=CTC_SLIDES),
        candidates=expand(f"{RESULTS}/{{slide}}/candidates.parquet", slide=CTC_SLIDES),
        reviews=lambda wildcards: list(review_files().values()),
    output:
        table=report(f"{COHORT}/ctc_review.tsv", category="CTC review"),
    params:
        samples=lambda wildcards: SAMPLES.loc[CTC_SLIDES, ["slide", "patient", "condition"]].to_dict(orient="list"),
        review_slides=lambda wildcards: list(review_files()),
        version=REVIEW_VERSION,
    log:
        f"{RESULTS}/logs/ctc_table.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ctc_table.py"
