# hemoprofile: deep morphological profiling of blood cells in liquid biopsies.
# Run with `make demo` (synthetic cohort) or `snakemake --profile profiles/default`; see README.md.
from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/train_segmenter.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/interaction.smk"
include: "workflow/rules/patients.smk"
include: "workflow/rules/review.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/collection.smk"
include: "workflow/rules/view.smk"


rule all:
    input:
        all_outputs(),
        anndata_outputs(),
        view_outputs(),
    default_target: True
