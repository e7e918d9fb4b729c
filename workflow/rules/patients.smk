# Patient level. aggregate_patients: every slide's cells, predictions and latent clusters -> one row per
# patient (results/cohort/patients.parquet, columns described in patients_columns.tsv);
# train_patient_model: the two-stage ensemble (disease vs control, then subtype) with cross-validated
# metrics; predict_patients: scores every patient, the unlabelled ones ('unknown' condition) included;
# report: the self-contained results/cohort/report.html.
# PATIENT_MODEL, COHORT, patient_model_file, patient_cell_types, patient_slide_inputs and report_inputs
# live in common.smk.


rule aggregate_patients:
    input:
        unpack(patient_slide_inputs),
    output:
        table=report(f"{COHORT}/patients.parquet", category="Patients", caption="../report/patients.rst"),
        columns=f"{COHORT}/patients_columns.tsv",
    params:
        samples=aggregate_samples(),
        embedded=SLIDES,
        candidate_slides=CTC_SLIDES,
        review_slides=lambda wildcards: list(review_files()),
        cell_types=patient_cell_types(),
        interaction=INTERACTION_ON,
        version=PATIENTS_VERSION,
    log:
        f"{RESULTS}/logs/aggregate_patients.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate_patients.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/aggregate_patients.py"


rule train_patient_model:
    input:
        table=f"{COHORT}/patients.parquet",
    output:
        model=f"{RESULTS}/models/patient_model.pkl",
        metrics=report(
            f"{PATIENT_MODEL_DIR}/metrics.json", category="Patients", caption="../report/patient_metrics.rst"
        ),
        oof=f"{PATIENT_MODEL_DIR}/oof_predictions.parquet",
        importances=f"{PATIENT_MODEL_DIR}/importances.parquet",
    params:
        settings={k: v for k, v in PATIENT_MODEL.items() if k != "model"},
        # the interaction_* columns are features only when interaction.patient_model says so
        exclude_prefixes=[] if INTERACTION["patient_model"] else ["interaction_"],
        seed=config["seed"],
        version=PATIENTS_VERSION,
    log:
        f"{RESULTS}/logs/train_patient_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_patient_model.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/train_patient_model.py"


rule predict_patients:
    input:
        table=f"{COHORT}/patients.parquet",
        model=patient_model_file(),
    output:
        predictions=report(
            f"{COHORT}/patient_predictions.parquet", category="Patients", caption="../report/patient_predictions.rst"
        ),
    params:
        version=PATIENTS_VERSION,
    log:
        f"{RESULTS}/logs/predict_patients.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_patients.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/predict_patients.py"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(f"{COHORT}/report.html", category="Report", caption="../report/report_html.rst"),
    params:
        config=config,
        samples=SAMPLES.reset_index(drop=True).to_dict(orient="list"),
        slides=SLIDES,
        collections=COLLECTIONS,
        tasks=[task for task in CLASSIFY_TASKS if not CLASSIFY["models"].get(task)],
        figure_keys=list(embedding_figure_outputs()),
        benchmarks=f"{RESULTS}/benchmarks",
        repo=workflow.basedir,
        version=stage_version("report"),
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/report.py"
