"""Snakemake adapter: segment one shard of a slide (hemoprofile.segment.shards.segment_shard)."""
import logging

from hemoprofile.runlog import job_progress
from hemoprofile.segment.shards import segment_shard, write_shard_summary

wc = snakemake.wildcards
progress = job_progress(snakemake.log[0], f"segment {wc.slide} shard {wc.shard}")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
if snakemake.params.segment["backend"] == "cellpose":
    import torch

    torch.set_num_threads(snakemake.threads)
summary = segment_shard(
    snakemake.input.image,
    snakemake.params.store,
    int(wc.shard),
    snakemake.params.shards,
    snakemake.params.segment,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    progress=progress,
)
write_shard_summary(summary, snakemake.output.summary)
