"""The package layout's rules, checked on the source: stage subpackages import only the shared layers
(config, io, nn, models, vocabulary, runlog, rates) and themselves, never another stage; no module grows past the
size a reader can hold; parsing the command line and the Snakefile's imports stay free of torch.
Application layers (cli, serve) sit above the stages: they may import any stage, and nothing below them
imports them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "hemoprofile"
STAGES = ("simulate", "ingest", "preprocess", "segment", "features", "classify", "embed", "interaction", "patients",
          "report", "export")
SHARED = ("config", "io", "nn", "models", "vocabulary", "runlog", "rates")
#: Entry points over the stages (the command line, the upload-and-predict server): may import stages.
APPLICATIONS = ("cli", "serve")
MAX_LINES = 600


def imported_hemoprofile_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every hemoprofile import in a file, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hemoprofile":
                found += [(node.lineno, f"hemoprofile.{alias.name}") for alias in node.names]
            elif node.module.startswith("hemoprofile."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hemoprofile.")]
    return found


def test_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from hemoprofile.classify.training import x\n    from hemoprofile import embed\n")
    assert imported_hemoprofile_modules(source) == [(2, "hemoprofile.classify.training"), (3, "hemoprofile.embed")]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_only_shared_layers_and_itself(stage):
    allowed = {stage, *SHARED}
    offending = []
    for path in sorted((PACKAGE / stage).rglob("*.py")):
        for line, module in imported_hemoprofile_modules(path):
            parts = module.split(".")
            if len(parts) > 1 and parts[1] not in allowed and parts[1] not in ("__version__", "STAGE_VERSIONS"):
                offending.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not offending, "a stage imports another stage:\n" + "\n".join(offending)


@pytest.mark.parametrize("layer", ("config", "io", "nn", "models", "vocabulary.py", "runlog.py", "rates.py"))
def test_shared_layers_import_no_stage(layer):
    paths = [PACKAGE / layer] if layer.endswith(".py") else sorted((PACKAGE / layer).rglob("*.py"))
    offending = [f"{p.relative_to(PACKAGE)}:{line} imports {m}" for p in paths
                 for line, m in imported_hemoprofile_modules(p) if m.split(".")[1:2] and m.split(".")[1] in STAGES]
    assert not offending, "a shared layer imports a stage:\n" + "\n".join(offending)


def test_no_stage_or_shared_layer_imports_an_application_layer():
    paths = [PACKAGE / f"{name}.py" if (PACKAGE / f"{name}.py").exists() else PACKAGE / name for name in (*STAGES, *SHARED)]
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]
    offending = [f"{f.relative_to(PACKAGE)}:{line} imports {m}" for f in files
                 for line, m in imported_hemoprofile_modules(f) if m.split(".")[1:2] and m.split(".")[1] in APPLICATIONS]
    assert not offending, "a stage or shared layer imports an application layer:\n" + "\n".join(offending)


def test_no_module_is_too_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("code", [
    "from hemoprofile.cli import build_parser; build_parser()",
    "import hemoprofile.config, hemoprofile.vocabulary, hemoprofile.simulate",
    "import hemoprofile.segment, hemoprofile.segment.settings",
    "import hemoprofile.serve, hemoprofile.serve.uploads",
])
def test_parsers_and_snakefile_imports_do_not_load_torch(code):
    probe = f"import sys; {code}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
