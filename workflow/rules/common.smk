# Configuration, sample sheet and input functions. Defines no rules.
# The package is installed into the environment that runs Snakemake (make env: pip install -e .).
import os

import pandas as pd

import hemoprofile
import hemoprofile.models
from hemoprofile.simulate import plan_cohort
from hemoprofile.ingest.demo_cohort import plan_collection_cohort
from hemoprofile.vocabulary import cell_type_names
from hemoprofile.config import (
    ConfigError,
    channel_list,
    check_collection_models,
    check_sample_channels,
    collection_modality,
    read_sample_sheet,
    validate_config,
    validate_sample_sheet,
)

try:
    config = validate_config(config)
except ConfigError as err:
    raise WorkflowError(f"configuration: {err}") from None



def checkout_path(path):
    """A relative path missing from the working directory but present in the checkout -> the checkout's
    copy, so `snakemake -d elsewhere` still finds a model file kept in the checkout. (The bundled models,
    `bundled:<name>`, are package data: model_input finds them wherever the package is installed.)"""
    bundled = os.path.join(workflow.basedir, path)
    if path and not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(bundled):
        return bundled
    return path


config["segment"]["model"] = checkout_path(config["segment"]["model"])


def model_input(value, what):
    """The file a model value names, for an input of a rule. A bundled model (`bundled:<name>`) -> its file in
    the installed package (hemoprofile.models), so replacing that file reruns the rules that use it; a
    path as it is (another rule may write it, e.g. train_segmenter). The parameters keep the value itself."""
    if not hemoprofile.models.is_bundled(value):
        return value
    try:
        return str(hemoprofile.models.resolve_model(value, what))
    except FileNotFoundError as err:
        raise WorkflowError(f"configuration: {err}") from None


RESULTS = config["results"]
# preprocess.keep false: preprocessed.zarr is a temporary (see preprocessed_output); nothing but segment
# and extract then asks for it, so Snakemake deletes it once they are done.
KEEP_PREPROCESSED = config["preprocess"]["keep"]
SYNTHETIC = config["synthetic"]["enabled"]
SYNTHETIC_DIR = f"{RESULTS}/synthetic"

# The generated collection cohort (config/collections.yaml; rules in collection.smk).
COLLECTION_DEMO = config["collection_demo"]["enabled"]
COLLECTION_DEMO_DIR = f"{RESULTS}/collection_demo"
if SYNTHETIC and COLLECTION_DEMO:
    raise WorkflowError("synthetic.enabled and collection_demo.enabled are both true; enable one cohort generator")

try:
    if SYNTHETIC:
        SAMPLES = validate_sample_sheet(
            plan_cohort(config["synthetic"], SYNTHETIC_DIR),
            source="synthetic cohort plan",
            check_paths=False,
        )
    elif COLLECTION_DEMO:
        SAMPLES = validate_sample_sheet(
            plan_collection_cohort(config["collection_demo"], COLLECTION_DEMO_DIR),
            source="collection demo plan",
            check_paths=False,
        )
    else:
        SAMPLES = read_sample_sheet(config["samples"])
    SHEET_NAME = "synthetic cohort plan" if SYNTHETIC else "collection demo plan" if COLLECTION_DEMO else config["samples"]
    check_sample_channels(SAMPLES, config, SHEET_NAME)
    check_collection_models(SAMPLES, config, SHEET_NAME)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# ROWS: every sample-sheet row. COLLECTIONS: rows with source 'collection' (folders of single-cell crops:
# ingested and classified in collection.smk, then aggregated with the slides). SLIDES: the image slides,
# the only rows the image stages (tile ... extract, embed, classifier training) see.
ROWS = list(SAMPLES.index)
COLLECTIONS = [s for s in ROWS if SAMPLES.loc[s, "source"] == "collection"]
SLIDES = [s for s in ROWS if s not in COLLECTIONS]


wildcard_constraints:
    slide="|".join(ROWS),


def synthetic_slide_output():
    """The simulated slide: a frame folder or one OME-TIFF, as synthetic.output_format says."""
    if config["synthetic"]["output_format"] == "frames":
        return directory(f"{SYNTHETIC_DIR}/{{slide}}/frames")
    return f"{SYNTHETIC_DIR}/{{slide}}/slide.ome.tif"


def stage_version(stage):
    return {"stage": stage, "version": hemoprofile.STAGE_VERSIONS[stage], "package": hemoprofile.__version__}


def sample(slide):
    return SAMPLES.loc[slide]


def slide_input(wildcards):
    """The slide's source image: a frame folder or a (OME-)TIFF file."""
    return sample(wildcards.slide)["path"]


def slide_reader_params(wildcards):
    """Everything the tile stage needs to read a slide (the sample sheet row and config.frames)."""
    row = sample(wildcards.slide)
    frames = row["format"] == "frames"
    return {
        "format": row["format"],
        "channels": channel_list(row["channels"]),
        "pixel_size_um": None if pd.isna(row.get("pixel_size_um")) else float(row["pixel_size_um"]),
        "frame_rows": int(row["frame_rows"]) if frames else None,
        "frame_cols": int(row["frame_cols"]) if frames else None,
        "frame_pattern": config["frames"]["pattern"] if frames else None,
        "frame_order": config["frames"]["order"] if frames else None,
    }


# --- cell classifiers (rules in classify.smk) ---

CLASSIFY = config["classify"]
CLASSIFY_TASKS = list(CLASSIFY["tasks"])
CLASSIFY_VERSION = stage_version("classify")


def classifier_model(task):
    """The model file classify uses for a task: a given one, else the one train_classifier writes."""
    given = CLASSIFY["models"].get(task)
    return model_input(given, f"classify.models.{task}") if given else f"{RESULTS}/models/classifier_{task}.pt"


def classifier_training_inputs(wildcards):
    """Every slide's cells and patches, plus what the label source needs (truth, a labels table)."""
    inputs = {
        "cells": expand(f"{RESULTS}/{{slide}}/cells.parquet", slide=SLIDES),
        "patches": expand(f"{RESULTS}/{{slide}}/patches.zarr", slide=SLIDES),
    }
    if CLASSIFY["label_source"] == "truth":
        if not SYNTHETIC:
            raise WorkflowError(
                "classify.label_source is 'truth', which needs the synthetic cohort (synthetic.enabled: true); "
                "use 'column' (a gating label column) or 'table' (classify.labels_table) for real slides"
            )
        inputs["truth_labels"] = expand(f"{SYNTHETIC_DIR}/{{slide}}/truth_labels.zarr", slide=SLIDES)
        inputs["truth_cells"] = f"{SYNTHETIC_DIR}/truth_cells.parquet"
    elif CLASSIFY["label_source"] == "table":
        inputs["labels_table"] = CLASSIFY["labels_table"]
    return inputs


def classifier_outputs():
    """Metrics of every task the workflow trains, and every slide's predictions (for rule all)."""
    outputs = [
        f"{RESULTS}/models/classifier_{task}.metrics.json" for task in CLASSIFY_TASKS if not CLASSIFY["models"].get(task)
    ] if SLIDES else []  # a cohort of collections only trains no slide classifier
    return outputs + expand(f"{RESULTS}/{{slide}}/predictions.parquet", slide=ROWS)


# --- unsupervised latent space (rules in embed.smk) ---

EMBED = config["embed"]
EMBED_VERSION = stage_version("embed")
EMBED_FIGURES = f"{RESULTS}/cohort/embedding"
# The maps coloured by predicted class wait for every slide's predictions.parquet.
EMBED_PREDICTIONS = bool(EMBED["figures"]["colour_by_prediction"])


def embed_sheet(slide):
    """The sample-sheet fields the embedder conditions on or colours by (batch defaults to the slide)."""
    row = sample(slide)
    batch = row.get("batch")
    return {
        "patient": str(row["patient"]),
        "condition": str(row["condition"]),
        "batch": slide if batch is None or pd.isna(batch) or str(batch) == "" else str(batch),
    }


def embed_cohort_inputs(wildcards):
    """Every slide's cells and patches, plus the synthetic truth (labels for the metrics only)."""
    inputs = {
        "cells": expand(f"{RESULTS}/{{slide}}/cells.parquet", slide=SLIDES),
        "patches": expand(f"{RESULTS}/{{slide}}/patches.zarr", slide=SLIDES),
    }
    if SYNTHETIC:
        inputs["truth_cells"] = f"{SYNTHETIC_DIR}/truth_cells.parquet"
        inputs["truth_labels"] = expand(f"{SYNTHETIC_DIR}/{{slide}}/truth_labels.zarr", slide=SLIDES)
    return inputs


def embedding_figure_outputs():
    """The cohort figures (keys of hemoprofile.embed.maps.FIGURE_KEYS) -> paths."""
    keys = ["cluster", "slide", "condition", "batch", "reconstructions"]
    if SYNTHETIC:
        keys.append("label")
    if EMBED_PREDICTIONS:
        keys.append("prediction")
    names = {k: f"map_{k}" for k in keys}
    names["reconstructions"] = "reconstructions"
    return {k: f"{EMBED_FIGURES}/{names[k]}.png" for k in keys}


# --- patient level (rules in patients.smk) ---

PATIENT_MODEL = config["patient_model"]
PATIENTS_VERSION = stage_version("patients")
COHORT = f"{RESULTS}/cohort"
PATIENT_MODEL_DIR = f"{COHORT}/patient_model"


def patient_model_file():
    """The patient model predict uses: a given one (patient_model.model), else the one the workflow trains."""
    return PATIENT_MODEL["model"] or f"{RESULTS}/models/patient_model.pkl"


def patient_cell_types():
    """The cell types the patient table counts for slides: the finest immune task's classes (+ CTC with a
    ctc task); none without slides. Collection rows add their classifier's classes (aggregate reads them
    from predictions.parquet)."""
    return cell_type_names(CLASSIFY_TASKS) if SLIDES else []


def patient_slide_inputs(wildcards):
    """Every row's cells and predictions (slides and collections); the slides' embeddings; with the ctc
    task, the slides' CTC candidates and the review CSVs that exist (review_files); the interaction
    stage's per-slide totals and window predictions when it is on."""
    inputs = {
        "cells": expand(f"{RESULTS}/{{slide}}/cells.parquet", slide=ROWS),
        "predictions": expand(f"{RESULTS}/{{slide}}/predictions.parquet", slide=ROWS),
        "embeddings": expand(f"{RESULTS}/{{slide}}/embedding.parquet", slide=SLIDES),
        "candidates": expand(f"{RESULTS}/{{slide}}/candidates.parquet", slide=CTC_SLIDES),
        "reviews": list(review_files().values()),
    }
    if INTERACTION_ON:  # the interaction_* columns
        inputs["interaction_slides"] = f"{INTERACTION_DIR}/slides.parquet"
        inputs["interaction_predictions"] = f"{INTERACTION_DIR}/predictions.parquet"
    return inputs


def aggregate_samples():
    """The sheet columns aggregate_patients reads: slide, patient, condition, source, modality."""
    table = SAMPLES.reset_index(drop=True)
    modality = [collection_modality(row, config) if row["source"] == "collection" else "" for _, row in table.iterrows()]
    return {**table[["slide", "patient", "condition", "source"]].to_dict(orient="list"), "modality": modality}


# --- cell-cell interaction (rule in interaction.smk) ---

INTERACTION = config["interaction"]
INTERACTION_ON = bool(INTERACTION["enabled"]) and bool(SLIDES)
INTERACTION_DIR = f"{COHORT}/interaction"
INTERACTION_VERSION = stage_version("interaction")
if INTERACTION_ON and not KEEP_PREPROCESSED:
    raise WorkflowError(
        "configuration: interaction.enabled is true and preprocess.keep is false: the interaction job reads "
        "every slide's preprocessed.zarr, so the temporaries would be kept until it runs (or rebuilt, with "
        "segmentation and extraction, after they were deleted); set one of the two the other way"
    )


def interaction_inputs(wildcards):
    """Every slide's preprocessed image, labels, cells, clusters, predictions and embedding, the embedder,
    and the synthetic truth (the regression target) when the cohort is simulated."""
    inputs = {
        key: expand(f"{RESULTS}/{{slide}}/{name}", slide=SLIDES)
        for key, name in (
            ("preprocessed", "preprocessed.zarr"), ("labels", "labels.zarr"), ("cells", "cells.parquet"),
            ("clusters", "clusters.parquet"), ("predictions", "predictions.parquet"),
            ("embedding", "embedding.parquet"),
        )
    }
    inputs["embedder"] = f"{RESULTS}/models/embedder.pt"
    if SYNTHETIC:
        inputs["truth_labels"] = expand(f"{SYNTHETIC_DIR}/{{slide}}/truth_labels.zarr", slide=SLIDES)
        inputs["truth_cells"] = f"{SYNTHETIC_DIR}/truth_cells.parquet"
    return inputs


def interaction_categories():
    """Slide -> its cVAE condition value (embed.condition_on: slide, batch or condition; none: no value)."""
    on = EMBED.get("condition_on", "none")
    if on == "none":
        return {}
    return {s: s if on == "slide" else embed_sheet(s)[on] for s in SLIDES}


def interaction_outputs():
    """The interaction stage's cohort outputs (none when interaction.enabled is false or there are no slides)."""
    if not INTERACTION_ON:
        return []
    return [f"{INTERACTION_DIR}/{name}" for name in ("slides.parquet", "predictions.parquet", "metrics.json")]


def report_inputs(wildcards):
    """Everything the cohort report shows (missing optional parts are reported as not available)."""
    inputs = {
        "patients": f"{COHORT}/patients.parquet",
        "patient_columns": f"{COHORT}/patients_columns.tsv",
        "patient_predictions": f"{COHORT}/patient_predictions.parquet",
        "embedding_figures": list(embedding_figure_outputs().values()) if SLIDES else [],
        "classifier_metrics": [
            f"{RESULTS}/models/classifier_{task}.metrics.json" for task in CLASSIFY_TASKS if not CLASSIFY["models"].get(task)
        ] if SLIDES else [],
        **{
            key: expand(f"{RESULTS}/{{slide}}/{name}", slide=SLIDES)
            for key, name in (
                ("images", "image.zarr"), ("labels", "labels.zarr"),
                ("cells", "cells.parquet"), ("predictions", "predictions.parquet"),
                ("clusters", "clusters.parquet"), ("patches", "patches.zarr"), ("embeddings", "embedding.parquet"),
            )
        },
    }
    if KEEP_PREPROCESSED:  # else the report shows image.zarr (the temporary is gone by then)
        inputs["preprocessed"] = expand(f"{RESULTS}/{{slide}}/preprocessed.zarr", slide=SLIDES)
    if not PATIENT_MODEL["model"]:
        inputs.update({
            "patient_metrics": f"{PATIENT_MODEL_DIR}/metrics.json",
            "patient_oof": f"{PATIENT_MODEL_DIR}/oof_predictions.parquet",
            "patient_importances": f"{PATIENT_MODEL_DIR}/importances.parquet",
        })
    if COLLECTIONS:
        inputs["collection_cells"] = expand(f"{RESULTS}/{{slide}}/cells.parquet", slide=COLLECTIONS)
        inputs["collection_predictions"] = expand(f"{RESULTS}/{{slide}}/predictions.parquet", slide=COLLECTIONS)
        inputs["collection_qc"] = expand(f"{RESULTS}/{{slide}}/qc.csv", slide=COLLECTIONS)
    if SLIDES:  # the latent space is the slides' (collections are not embedded)
        inputs["embedding_metrics"] = f"{EMBED_FIGURES}/metrics.json"
        inputs["clusters_by_condition"] = f"{EMBED_FIGURES}/clusters_by_condition.parquet"
    if SYNTHETIC:
        inputs["truth_cells"] = f"{SYNTHETIC_DIR}/truth_cells.parquet"
    if INTERACTION_ON:
        inputs["interaction_metrics"] = f"{INTERACTION_DIR}/metrics.json"
        inputs["interaction_predictions"] = f"{INTERACTION_DIR}/predictions.parquet"
    if CTC_SLIDES:
        inputs["ctc_table"] = f"{COHORT}/ctc_review.tsv"
        if CTC_AUTO:
            inputs["ctc_calibration"] = CTC_CALIBRATION
            inputs["ctc_calibration_curve"] = f"{COHORT}/ctc_calibration_curve.tsv"
    return inputs


def preprocessed_output():
    """preprocess's output: preprocessed.zarr, a temporary when preprocess.keep is false."""
    path = directory(f"{RESULTS}/{{slide}}/preprocessed.zarr")
    return path if KEEP_PREPROCESSED else temp(path)


def all_outputs():
    outputs = expand(f"{RESULTS}/{{slide}}/preprocessed.zarr", slide=SLIDES) if KEEP_PREPROCESSED else []
    outputs += expand(f"{RESULTS}/{{slide}}/labels.zarr", slide=SLIDES)
    for name in ("cells.parquet", "patches.zarr", "clusters.parquet"):
        outputs += expand(f"{RESULTS}/{{slide}}/{name}", slide=SLIDES)
    outputs += collection_outputs()
    outputs += classifier_outputs()
    outputs += expand(f"{RESULTS}/{{slide}}/embedding.parquet", slide=SLIDES)
    if SLIDES:
        outputs += [f"{RESULTS}/models/embedder.metrics.json", f"{EMBED_FIGURES}/metrics.json",
                    f"{EMBED_FIGURES}/clusters_by_condition.parquet"]
    if SYNTHETIC:
        outputs.append(f"{SYNTHETIC_DIR}/truth_cells.parquet")
    if COLLECTION_DEMO:
        outputs.append(f"{COLLECTION_DEMO_DIR}/samples.tsv")
    outputs += interaction_outputs()
    outputs += [f"{COHORT}/patients.parquet", f"{COHORT}/patient_predictions.parquet", f"{COHORT}/report.html"]
    outputs += ctc_outputs()
    return outputs


# --- CTC candidates and their review (rules in review.smk) ---

CTC_REVIEW = config["ctc"]
REVIEW_VERSION = stage_version("review")
# Slides that get candidates: every image slide when the ctc classifier runs (collections have no CTCs).
CTC_SLIDES = SLIDES if "ctc" in CLASSIFY_TASKS else []
CTC_AUTO = CTC_REVIEW["candidate_threshold"] == "auto"
CTC_CALIBRATION = f"{RESULTS}/models/ctc_calibration.json"
REVIEWS_DIR = CTC_REVIEW["reviews"] or os.path.join(os.path.dirname(config["samples"]) or ".", "reviews")


def review_files():
    """Slide -> its review CSV (<REVIEWS_DIR>/<slide>.csv) for the slides that have one now. A file is an
    input of aggregate_patients and ctc_table only, so adding or editing one reruns just those and what
    follows."""
    return {s: f"{REVIEWS_DIR}/{s}.csv" for s in CTC_SLIDES if os.path.isfile(f"{REVIEWS_DIR}/{s}.csv")}


def ctc_calibration_inputs(wildcards):
    """The ctc classifier's metrics (its held-out patients), every slide's cells and predictions, and what
    the label source needs for their truth."""
    if CLASSIFY["models"].get("ctc"):
        raise WorkflowError(
            "ctc.candidate_threshold is 'auto', which chooses the threshold on the held-out patients of a ctc "
            "classifier the workflow trains; classify.models.ctc names a ready model: set a number instead"
        )
    inputs = classifier_training_inputs(wildcards)
    del inputs["patches"]
    inputs["metrics"] = f"{RESULTS}/models/classifier_ctc.metrics.json"
    inputs["predictions"] = expand(f"{RESULTS}/{{slide}}/predictions.parquet", slide=SLIDES)
    return inputs


def ctc_candidate_inputs(wildcards):
    """A slide's cells, predictions and clusters, plus the calibration when the threshold is 'auto'."""
    inputs = {name: f"{RESULTS}/{wildcards.slide}/{name}.parquet" for name in ("cells", "predictions", "clusters")}
    if CTC_AUTO:
        inputs["calibration"] = CTC_CALIBRATION
    return inputs


def ctc_outputs():
    """Every slide's candidates and review page, the cohort CTC table, the calibration (for rule all)."""
    if not CTC_SLIDES:
        return []
    outputs = [f"{RESULTS}/{s}/{name}" for s in CTC_SLIDES for name in ("candidates.parquet", "review.html")]
    outputs.append(f"{COHORT}/ctc_review.tsv")
    if CTC_AUTO:
        outputs.append(CTC_CALIBRATION)
    return outputs


# --- single-cell collections (rules in collection.smk) ---

COLLECTION = config["collection"]
COLLECTION_VERSION = stage_version("ingest")
COLLECTION["models"] = {m: checkout_path(p) for m, p in COLLECTION["models"].items()}
config["collection_demo"]["source"] = checkout_path(config["collection_demo"]["source"])


def collection_model(wildcards):
    """The classifier file of a collection row's modality (collection.models)."""
    return model_input(COLLECTION["models"][collection_modality(sample(wildcards.slide), config)], "collection.models")


def collection_outputs():
    """Every collection's ingested cells, patches and QC table."""
    return [f"{RESULTS}/{row}/{name}" for row in COLLECTIONS for name in ("cells.parquet", "patches.zarr", "qc.csv")]


def segmenter_dsb_index(wildcards):
    """The DSB 2018 index the segmenter trains on (train_segmenter.dsb_dir); an error when none is named."""
    dsb_dir = config["train_segmenter"].get("dsb_dir")
    if not dsb_dir:
        raise WorkflowError(
            "train_segmenter.dsb_dir is not set: name the DSB 2018 fluorescence folder (images/<id>.png, "
            "masks/<id>.png, index.csv) in the config to train the segmentation model"
        )
    return f"{dsb_dir}/index.csv"


def finetune_annotation_files(wildcards):
    """Every file of train_segmenter.finetune.folders (a new or corrected file retrains rule finetune_segmenter)."""
    folders = config["train_segmenter"]["finetune"]["folders"]
    if not folders:
        raise WorkflowError("train_segmenter.finetune.folders is empty: name the folders of your annotated images "
                            "(e.g. the corrected output of `hemoprofile export-for-annotation`)")
    files = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise WorkflowError(f"train_segmenter.finetune.folders: {folder} is not a folder")
        files += sorted(os.path.join(folder, name) for name in os.listdir(folder)
                        if os.path.isfile(os.path.join(folder, name)))
    return files


# --- viewer entries (rule in view.smk) ---


def view_outputs():
    """Every slide's view.zarr: its image with the segmentation as NGFF labels, for napari (README)."""
    return expand(f"{RESULTS}/{{slide}}/view.zarr", slide=SLIDES)


# --- AnnData export (rules in export.smk) ---

ANNDATA = config["anndata"]
EXPORT_VERSION = stage_version("export")


def anndata_outputs():
    """The .h5ad files the workflow builds (none when anndata.enabled is false, or when the cohort has no
    image slides: collections have no per-cell features to export)."""
    if not ANNDATA["enabled"] or not SLIDES:
        return []
    outputs = expand(f"{RESULTS}/{{slide}}/cells.h5ad", slide=SLIDES) if ANNDATA["per_slide"] else []
    if ANNDATA["cohort"]:
        outputs.append(f"{COHORT}/cells.h5ad")
    return outputs


def export_sheet(slide):
    """The sample-sheet fields that become obs columns: patient, condition, and batch where the sheet has one."""
    row = sample(slide)
    fields = {"patient": str(row["patient"]), "condition": str(row["condition"])}
    batch = row.get("batch")
    if batch is not None and not pd.isna(batch) and str(batch) != "":
        fields["batch"] = str(batch)
    return fields


def export_inputs(slides):
    return {
        "cells": [f"{RESULTS}/{s}/cells.parquet" for s in slides],
        "predictions": [f"{RESULTS}/{s}/predictions.parquet" for s in slides],
        "embedding": [f"{RESULTS}/{s}/embedding.parquet" for s in slides],
    }
