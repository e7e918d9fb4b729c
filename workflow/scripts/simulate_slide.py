"""Snakemake adapter: simulate one synthetic slide with ground truth (hemoprofile.synth.simulate_slide)."""
import package_path  # noqa: F401  (src/ on sys.path)
from hemoprofile.runlog import job_progress
from hemoprofile.synth import simulate_slide

progress = job_progress(snakemake.log[0], f"simulate {snakemake.wildcards.slide}")
summary = simulate_slide(
    snakemake.params.synthetic,
    snakemake.params.sample,
    snakemake.params.out_dir,
    frame_pattern=snakemake.params.frames["pattern"],
    frame_order=snakemake.params.frames["order"],
)
progress(f"done: {summary}")
