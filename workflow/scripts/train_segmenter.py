"""Snakemake adapter: train the Cellpose segmentation model (hemoprofile.segment.training.train.train_from_config)."""
import logging

from hemoprofile.segment.training.train import train_from_config

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger().addHandler(logging.StreamHandler())

params = dict(snakemake.params.train)
params["threads"] = snakemake.threads
train_from_config(
    params,
    model_path=snakemake.output.model,
    metrics_path=snakemake.output.metrics,
    split_path=snakemake.output.split,
    work_dir=snakemake.output.work,
    cohort_path=snakemake.input.cohort[0] if snakemake.input.cohort else None,
    segment_cfg=snakemake.params.segment,
)
