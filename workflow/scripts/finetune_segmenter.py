"""Snakemake adapter: fine-tune the segmentation model on annotated folders
(hemoprofile.segment.training.finetune.finetune_from_folders)."""
import logging

from hemoprofile.segment.training.finetune import finetune_from_folders

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")

params = dict(snakemake.params.train)
params["threads"] = snakemake.threads
finetune_from_folders(
    snakemake.params.folders,
    snakemake.output.model,
    params,
    segment_cfg=snakemake.params.channels,
    start_model=snakemake.input.start_model,
    metrics_path=snakemake.output.metrics,
)
