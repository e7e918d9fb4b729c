"""Snakemake adapter: simulate the segmentation model's synthetic training cohort with the simulate stage
(hemoprofile.simulate) and the training seed (hemoprofile.segment.training.data.training_cohort_config),
and write its sheet."""

from hemoprofile.io import atomic_output
from hemoprofile.runlog import job_progress
from hemoprofile.segment.training.data import training_cohort_config
from hemoprofile.simulate import plan_cohort, simulate_slide

progress = job_progress(snakemake.log[0], "simulate segmenter training cohort")
cfg = training_cohort_config(snakemake.params.synthetic, snakemake.params.train)
plan = plan_cohort(cfg, snakemake.output.slides)
for _, sample in plan.iterrows():
    progress(f"{sample['slide']}: {simulate_slide(cfg, sample.to_dict(), snakemake.output.slides)}")
with atomic_output(snakemake.output.cohort) as tmp:
    plan.to_csv(tmp, sep="\t", index=False)
progress(f"wrote {len(plan)} slides and {snakemake.output.cohort}")
