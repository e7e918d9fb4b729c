# hemoprofile: deep morphological profiling of blood cells in liquid biopsies.
# Run with `make demo` (synthetic cohort) or `snakemake --profile profiles/default`; see README.md.
import os

from snakemake.utils import min_version

min_version("8.20")

# Jobs import the package from this checkout (also inside cluster conda envs, which do not install it).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.join(workflow.basedir, "src"), os.environ.get("PYTHONPATH")) if p
)


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/preprocess.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
