"""Subprocess for test_preprocessing_memory_does_not_grow_with_the_input: preprocess one file and print
the peak resident memory of this process and of its worker processes (KiB, JSON)."""

import json
import resource
import sys

from megatron_ext.data.preprocess import preprocess_jsonl


def main(path: str, prefix: str, workers: int) -> None:
    _, stats = preprocess_jsonl(path, prefix, tokenizer_type="NullTokenizer", vocab_size=1000, append_eod=True,
                                workers=workers, progress=False)
    print(json.dumps({"documents": stats.documents,
                      "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "workers_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))


if __name__ == "__main__":  # the guard matters: the worker pool re-imports this module
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
