"""Where a stage's time goes on a real slide: sample it with py-spy and print the heaviest functions.

Runs one per-slide stage (preprocess, segment or extract) of a finished slide folder (``image.zarr``,
``preprocessed.zarr``, ``labels.zarr`` as the workflow wrote them) in a child process, with the config
the slide was made with, writing into a scratch folder; samples the child and its forked workers with
``py-spy record --subprocesses`` for ``--seconds`` and then stops it (the stage does not finish: a
sample of its steady state is what is wanted; the first seconds, the slide statistics and the pool's
start, are included). Prints, over all samples of all processes:

- self time by function (where the CPU is spent: numpy/scipy/skimage internals show as the Python
  function that called them, because py-spy is run without ``--native``);
- inclusive time of the stage's own steps (functions of ``hemoprofile``), the figure to act on;
- with ``--idle``, the share of samples whose leaf is a waiting call (pool, queue, lock); without it
  py-spy drops idle samples, so the percentages are of CPU-busy samples only.

    PYTHONPATH=src .venv/bin/python bench/profile_stage.py preprocess \\
        --slide /work/benchwork/scale/scale_1_1/results/P01_S1 \\
        --configfile config/scale.yaml --seconds 120 --threads 2

Needs py-spy (``pip install py-spy``; the ``bench`` extra) and permission to ptrace the child (root,
or ``kernel.yama.ptrace_scope`` 0). The raw collapsed stacks are kept next to the printed table
(``--keep-raw``) for a flame graph (e.g. speedscope.app opens them).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "segment", "extract")


def stage_call(stage: str, slide: Path, out: Path, configfiles: list[Path], threads: int) -> str:
    """Python source that runs ``stage`` on ``slide`` into ``out`` (run in the child process)."""
    return f"""
import yaml
from snakemake.utils import update_config
from hemoprofile.config import validate_config
from pathlib import Path
cfg = yaml.safe_load(Path({str(ROOT / 'config' / 'config.yaml')!r}).read_text())
for extra in {[str(p) for p in configfiles]!r}:
    update_config(cfg, yaml.safe_load(Path(extra).read_text()) or {{}})
cfg = validate_config(cfg)
slide, out = Path({str(slide)!r}), Path({str(out)!r})
if {stage!r} == 'preprocess':
    from hemoprofile.preprocess.pipeline import preprocess_slide
    preprocess_slide(slide / 'image.zarr', out / 'preprocessed.zarr', cfg['preprocess'], threads={threads})
elif {stage!r} == 'segment':
    from hemoprofile.segment.tiled import segment_slide
    segment_slide(slide / 'preprocessed.zarr', out / 'labels.zarr', cfg['segment'], threads={threads})
else:
    from hemoprofile.features.extract import extract_slide
    extract_slide(slide / 'labels.zarr', slide / 'image.zarr', slide / 'preprocessed.zarr', out / 'cells.parquet',
                  out / 'patches.zarr', out / 'clusters.parquet', cfg['extract'], cfg['gating'], slide=slide.name,
                  threads={threads})
"""


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines: ``frame;frame;...;leaf count`` (root first)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)`` so lines of one function add up."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


def summarise(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples (could py-spy attach? see its stderr above)"
    self_time: collections.Counter = collections.Counter()
    own_steps: collections.Counter = collections.Counter()
    idle = 0
    for frames, count in stacks:
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_time[short(frames[-1])] += count
        for f in {short(f) for f in frames if "hemoprofile" in f}:
            own_steps[f] += count
        if any(w in frames[-1] for w in ("wait (threading.py", "_recv", "select (", "poll (", "acquire")):
            idle += count
    lines = [f"{total} samples over all processes; leaf in a waiting call (pool/queue/lock): "
             f"{100 * idle / total:.1f} %", "", f"self time, top {top}:"]
    lines += [f"  {100 * c / total:6.1f} %  {f}" for f, c in self_time.most_common(top)]
    lines += ["", f"inclusive time of hemoprofile functions, top {top}:"]
    lines += [f"  {100 * c / total:6.1f} %  {f}" for f, c in own_steps.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--slide", type=Path, required=True, help="a slide's results folder")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[ROOT / "config" / "scale.yaml"],
                        help="configs layered on config/config.yaml, as the slide was made with")
    parser.add_argument("--seconds", type=float, default=120, help="seconds to sample (default 120)")
    parser.add_argument("--threads", type=int, default=2, help="the stage's threads (default 2)")
    parser.add_argument("--rate", type=int, default=50, help="samples per second per process (default 50)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--idle", action="store_true",
                        help="sample idle threads too (py-spy --idle): shows the share spent waiting")
    parser.add_argument("--keep-raw", type=Path, help="copy the collapsed stacks here")
    parser.add_argument("--scratch", type=Path, help="scratch folder for the stage's output (default: a temp folder)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("py-spy not found: pip install py-spy (the project's 'bench' extra)")
    for name in {"preprocess": ["image.zarr"], "segment": ["preprocessed.zarr"],
                 "extract": ["labels.zarr", "image.zarr", "preprocessed.zarr"]}[args.stage]:
        if not (args.slide / name).exists():
            sys.exit(f"{args.slide / name}: missing (the {args.stage} stage reads it)")
    scratch = Path(tempfile.mkdtemp(prefix=f"profile-{args.stage}-", dir=args.scratch))
    raw = scratch / "stacks.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", stage_call(args.stage, args.slide, scratch, args.configfile,
                                                                args.threads)],
                             env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    load0 = os.getloadavg()
    try:
        spy = subprocess.run([py_spy, "record", "--pid", str(child.pid), "--subprocesses", "--format", "raw",
                              "--rate", str(args.rate), "--duration", str(int(args.seconds)), "--nonblocking",
                              "-o", str(raw)] + (["--idle"] if args.idle else []), capture_output=True, text=True)
        if spy.returncode != 0:
            print(spy.stderr.strip(), file=sys.stderr)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    time.sleep(0.5)
    print(f"== {args.stage} of {args.slide}, threads {args.threads}, {args.seconds:.0f} s sampled at {args.rate}/s "
          f"(load average before {'/'.join(f'{v:.1f}' for v in load0)}, after "
          f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}) ==")
    stacks = read_collapsed(raw) if raw.exists() else []
    print(summarise(stacks, args.top))
    if args.keep_raw and raw.exists():
        shutil.copy(raw, args.keep_raw)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
