"""Snakemake adapter: one slide's CTC review page (hemoprofile.report.review_page.write_review_page)."""
from hemoprofile.io.ctc_review import candidates_metadata, read_candidates
from hemoprofile.report.review_page import write_review_page
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"review_page {snakemake.wildcards.slide}")
candidates = read_candidates(snakemake.input.candidates)
write_review_page(snakemake.wildcards.slide, candidates, snakemake.input.patches, snakemake.output.html,
                  threshold=candidates_metadata(snakemake.input.candidates),
                  max_candidates=snakemake.params.max_candidates)
progress(f"{len(candidates)} candidates -> {snakemake.output.html}")
