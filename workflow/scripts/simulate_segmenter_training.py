"""Snakemake adapter: simulate the segmentation model's synthetic training cohort with the simulate stage
(hemoprofile.simulate.simulate_cohort) and the training seed
(hemoprofile.segment.training.data.training_cohort_config)."""

from hemoprofile.runlog import job_progress
from hemoprofile.segment.training.data import training_cohort_config
from hemoprofile.simulate import simulate_cohort

simulate_cohort(
    training_cohort_config(snakemake.params.synthetic, snakemake.params.train),
    snakemake.output.slides,
    snakemake.output.cohort,
    progress=job_progress(snakemake.log[0], "simulate segmenter training cohort"),
)
