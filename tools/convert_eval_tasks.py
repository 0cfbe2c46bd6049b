"""Convert lm-evaluation-harness documents (ARC, HellaSwag, PIQA, WinoGrande, MMLU) into --eval-tasks files.

    python tools/convert_eval_tasks.py --format arc --input ARC-Easy/test.jsonl --output tasks/arc_easy.jsonl
    python tools/convert_eval_tasks.py --format mmlu --input mmlu/anatomy_test.parquet \\
        --fewshot-file mmlu/anatomy_dev.parquet --num-fewshot 5 --output tasks/mmlu_anatomy.jsonl

--input holds the dataset's rows as the harness reads them from the Hugging Face hub (JSON lines, a JSON list
or Parquet: what `datasets` exports, or the hub's own Parquet files), which you download yourself; nothing is
fetched here. The prompts, choices and gold indices are the harness's for that task (docs/evaluation.md);
few-shot examples are the first --num-fewshot documents of --fewshot-file (the harness's first_n sampler).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ext.evaluation.converters import FORMATS, convert  # noqa: E402
from megatron_ext.evaluation.tasks import write_task  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=FORMATS, help="the task the documents belong to")
    parser.add_argument("--input", required=True, help="the documents (.jsonl, .json or .parquet)")
    parser.add_argument("--output", required=True, help="task file to write (JSONL)")
    parser.add_argument("--name", default=None, help="task name in logs and TensorBoard (default: the output "
                                                     "file's name; mmlu_SUBJECT for MMLU)")
    parser.add_argument("--fewshot-file", default=None, help="documents to take few-shot examples from")
    parser.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples before each question")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N documents")
    parser.add_argument("--subject", default=None, help="MMLU subject, when the rows have no 'subject' field")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    documents, header = convert(args.format, args.input, args.fewshot_file, args.num_fewshot, args.limit,
                                args.subject)
    if args.name:
        header["name"] = args.name
    write_task(args.output, documents, header or None)
    print(f" > wrote {len(documents)} {args.format} documents to {args.output}"
          + (f" ({args.num_fewshot}-shot)" if args.num_fewshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
