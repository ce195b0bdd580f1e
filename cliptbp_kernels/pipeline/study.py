"""The evidence study: can the reference experiment show whether ClipTBP's mechanism works?
(docs/study.md gives the design, the admission rule and the criteria, fixed before any
ClipTBP result.)

    python -m cliptbp_kernels.pipeline.study admission      # raw-input L_clip / L_boun
    python -m cliptbp_kernels.pipeline.study select         # freeze the reference model
    python -m cliptbp_kernels.pipeline.study run            # the study (about 80 min)

``admission`` computes, for every setting, ClipTBP's two contrastive terms on the raw input
features of the validation split (the first half of the admission rule; no training).
``select`` chooses the reference model's span-loss configuration and the foreground
decoder's threshold on a separate data seed, with the baseline alone (no ClipTBP run), and
writes ``docs/study/selection-round<R>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .study_design import (  # the study's names, as study.SETTINGS, study.run_many, ...
    CANDIDATE_ROUNDS,
    CANDIDATES,
    CLIPTBP,
    DATA_SEED,
    REFERENCE,
    SELECTION_SEED,
    SETTINGS,
    TARGETED,
    THRESHOLDS,
    _selection_md,
    admission,
    decode_thresholds,
    raw_input_losses,
    run_many,
    select,
    setting_data,
)

__all__ = ["SETTINGS", "TARGETED", "DATA_SEED", "SELECTION_SEED", "CANDIDATES",
           "CANDIDATE_ROUNDS", "REFERENCE", "CLIPTBP", "THRESHOLDS", "setting_data",
           "raw_input_losses", "admission", "select", "run_many", "decode_thresholds", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cliptbp_kernels.pipeline.study",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("admission", help="raw-input L_clip / L_boun of every setting")
    a.add_argument("--data-dir", default="data/study")
    a.add_argument("--seed", type=int, default=DATA_SEED)
    a.add_argument("--out", default=None, help="write the result as JSON here")
    s = sub.add_parser("select", help="choose the reference model on the separate data seed")
    s.add_argument("--data-dir", default="data/study")
    s.add_argument("--runs", default="runs/select")
    s.add_argument("--out", default="docs/study",
                   help="folder of selection-round<R>.{json,md}")
    s.add_argument("--round", type=int, default=max(CANDIDATE_ROUNDS),
                   choices=sorted(CANDIDATE_ROUNDS), help="candidate set")
    r = sub.add_parser("run", help="the whole study: runs, statistics, verdict, pictures")
    r.add_argument("--data-dir", default="data/study")
    r.add_argument("--runs", default="runs/study")
    r.add_argument("--out", default="docs/study/results")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    r.add_argument("--workers", type=int, default=2,
                   help="runs side by side, one torch thread each (0: in this process)")
    r.add_argument("--no-tacos", action="store_true", help="skip the long-video runs")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field of every run (e.g. epochs=1)")
    r.add_argument("--sizes", default=None, metavar="TRAIN,VAL",
                   help="queries per split of the QVHighlights-like data (default 1200,300)")
    r.add_argument("--tacos-sizes", default=None, metavar="TRAIN,VAL")
    r.add_argument("--resamples", type=int, default=10000)
    args = p.parse_args(argv)
    if args.cmd == "run":
        from .study_run import run_study
        from .train import parse_overrides

        def sizes(text):
            if text is None:
                return None
            try:
                tr, va = (int(x) for x in text.split(","))
            except ValueError:
                p.error(f"sizes must be TRAIN,VAL, got {text!r}")
            return {"train": tr, "val": va}

        cmd = "python -m cliptbp_kernels.pipeline.study " + " ".join(
            argv if argv is not None else sys.argv[1:])
        run_study(Path(args.data_dir), Path(args.runs), Path(args.out), args.settings,
                  args.seeds, sizes(args.sizes), sizes(args.tacos_sizes),
                  parse_overrides(args.set), args.workers, args.resamples,
                  not args.no_tacos, cmd)
        return 0
    if args.cmd == "admission":
        res = admission(Path(args.data_dir), args.seed)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    doc = select(Path(args.data_dir), Path(args.runs),
                 candidates=CANDIDATE_ROUNDS[args.round])
    doc["round"] = args.round
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"selection-round{args.round}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"selection-round{args.round}.md").write_text(_selection_md(doc))
    print(_selection_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
