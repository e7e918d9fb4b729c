"""Snakemake adapter: ingest one collection row's folder of crops, checking every file
(hemoprofile.ingest.collection.ingest_collection); the QC table lists what was skipped or converted."""
from hemoprofile.classify.checkpoints import load_classifier
from hemoprofile.ingest.collection import collection_limits, ingest_collection
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"ingest_collection {snakemake.wildcards.slide}")
settings = snakemake.params.collection
summary = ingest_collection(
    snakemake.input.folder,
    snakemake.output.cells,
    snakemake.output.patches,
    settings["patch_size"] or load_classifier(snakemake.input.model).patch_size,
    settings["patch_dtype"],
    name=snakemake.wildcards.slide,
    keep_aspect=settings["keep_aspect"],
    limits=collection_limits(settings),
    out_qc=snakemake.output.qc,
    progress=progress,
)
if settings["strict"] and summary["n_skipped"]:
    raise ValueError(f"collection.strict: {summary['n_skipped']} file(s) of {snakemake.input.folder} skipped "
                     f"({summary['problems']}); see {snakemake.output.qc}")
