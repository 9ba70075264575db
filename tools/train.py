#!/usr/bin/env python
"""Fine-tune a video classifier.

    python tools/train.py configs/demo.yaml [key=value ...]
    torchrun --nproc_per_node 2 tools/train.py configs/x3d_s_sports.yaml data.root=/data/sports

Any config key can be overridden on the command line (`data.root=DIR out_dir=DIR
optim.lr=0.005 freeze.stages=3`); `--resume` is short for `resume=auto`.
"""
from __future__ import annotations

import argparse
import sys

from videoft.config import load_config
from videoft.errors import report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=DIR")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt if present")
    args = parser.parse_intermixed_args(argv)  # `--resume` may come before or after the overrides
    overrides = list(args.overrides) + (["resume=auto"] if args.resume else [])
    cfg = load_config(args.config, overrides)  # a ConfigError is a user error: one message, exit 2
    from videoft.engine.train import NonFiniteLossError  # heavy imports once the config is valid
    from videoft.runner import run

    try:
        summary = run(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    best = summary["best_metric"]
    print(f"\ncheckpoints: {summary['last']}" + (f" and {summary['best']}" if summary["best"] else ""))
    if best["epoch"] > 0:
        print(f"best {best['metric']}: {best['value']:.4f} (epoch {best['epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
