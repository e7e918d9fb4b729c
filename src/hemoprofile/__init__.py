"""hemoprofile: deep morphological profiling of blood cells in liquid biopsies."""

__version__ = "0.1.0"


#: Version of each stage's output format and algorithm. Rules pass these as params, so bumping one
#: reruns that stage (and what depends on it) and nothing else. Bump when a stage's output changes.
STAGE_VERSIONS = {
    "simulate": 2,
    "tile": 2,
    "preprocess": 2,
    "segment": 3,
    "extract": 2,
    "ingest": 1,
    "classify": 1,
    "embed": 2,
    "patients": 2,
    "report": 2,
    "export": 1,
    "view": 1,
    "interaction": 1,
    "review": 1,
}
