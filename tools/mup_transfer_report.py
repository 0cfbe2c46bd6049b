"""Table and plot for examples/mup_transfer.sh: final validation loss against learning rate, per width,
under SP and μP, and where the best LR sits at each width (mup/transfer.py does the work).

Reads the --log-json files `{param}_w{width}_lr{lr}_s{seed}.jsonl` in --runs and writes to --out:
transfer.json (every loss, per seed and averaged, and the best LRs), transfer.md (tables: mean ± std over
seeds, the best LR per seed, whether each wider model beats the narrower beyond the seed noise) and
transfer.png (the seed mean with the min-max band).

    python tools/mup_transfer_report.py --runs build/mup_transfer/runs --out build/mup_transfer
"""

from __future__ import annotations

import argparse

from mup.transfer import write_report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="directory of PARAM_wWIDTH_lrLR_sSEED.jsonl logs")
    p.add_argument("--out", required=True)
    p.add_argument("--base-width", type=int, default=None, help="μP base width (only shown in the title)")
    p.add_argument("--title", default="")
    opts = p.parse_args(argv)
    title = ", ".join(part for part in (opts.title, f"μP base width {opts.base_width}" if opts.base_width else "")
                      if part)
    summary, text = write_report(opts.runs, opts.out, title)
    print(text)
    return summary


if __name__ == "__main__":
    main()
