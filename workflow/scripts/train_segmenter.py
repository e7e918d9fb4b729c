"""Snakemake adapter: train the Cellpose segmentation model (hemoprofile.segmentation_training.train_from_config)."""
import logging

import package_path  # noqa: F401  (src/ on sys.path)
from hemoprofile.segmentation_training import train_from_config

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
    synth_cfg=snakemake.params.synthetic if params.get("synthetic_weight", 0) > 0 else None,
)
