"""Snakemake adapter: simulate one synthetic slide with ground truth (hemoprofile.simulate.simulate_slide)."""
from hemoprofile.runlog import job_progress
from hemoprofile.simulate import simulate_slide

progress = job_progress(snakemake.log[0], f"simulate {snakemake.wildcards.slide}")
summary = simulate_slide(
    snakemake.params.synthetic,
    snakemake.params.sample,
    snakemake.params.out_dir,
    frame_pattern=snakemake.params.frames["pattern"],
    frame_order=snakemake.params.frames["order"],
    threads=snakemake.threads,
)
progress(f"done: {summary}")
