# Shared helpers of the example recipes (sourced, not run). Bash 4+.
#
#   ex_var NAME DEFAULT SMOKE_DEFAULT "description"   a variable the user may override from the environment
#   ex_help_requested "$@" && ex_usage "title"         --help / -h: list the variables and their values
#   ex_torchrun ARGS...                                pretrain_llama.py under torchrun (multi-node from env)
#   ex_has_checkpoint DIR                              true when DIR holds a pretrain_llama.py checkpoint
#   ex_load_dir SAVE INIT                              SAVE when it has a checkpoint (resume), else INIT
#   ex_smoke_tokenizer DIR                             sentencepiece tokenizer on the bundled corpus (cached)
#   ex_smoke_neox_tokenizer DIR                        GPT-NeoX-style byte-level BPE (DIR/tokenizer.json) on it (cached)
#   ex_smoke_preprocess DIR TOKENIZER [SPECIAL]        bundled english + code corpus -> DIR/{english,code}_text_document
#                                                      (TOKENIZER: a sentencepiece .model, or a HF tokenizer directory)

EX_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$EX_REPO"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SMOKE=${SMOKE:-0}
EX_VARS=()

ex_var() {  # NAME DEFAULT SMOKE_DEFAULT DESCRIPTION
  local name=$1 default=$2 smoke_default=$3 desc=$4
  if [ -z "${!name+x}" ]; then
    if [ "$SMOKE" = 1 ]; then printf -v "$name" '%s' "$smoke_default"; else printf -v "$name" '%s' "$default"; fi
  fi
  EX_VARS+=("$name"$'\t'"$desc")
}

ex_help_requested() {
  local a
  for a in "$@"; do case "$a" in -h|--help) return 0 ;; esac; done
  return 1
}

ex_usage() {  # TITLE (the script's header comment is printed too)
  local script=${BASH_SOURCE[1]}
  echo "$1"
  echo
  sed -n '2,/^[^#]/p' "$script" | grep '^#' | sed 's/^# \{0,1\}//'
  echo
  echo "Variables (environment; current value shown$([ "$SMOKE" = 1 ] && echo ', SMOKE=1 defaults')):"
  local entry name
  for entry in "${EX_VARS[@]}"; do
    name=${entry%%$'\t'*}
    printf '  %-22s %s\n  %-22s   = %s\n' "$name" "${entry#*$'\t'}" "" "${!name}"
  done
  echo "  PYTHON                 interpreter"
  echo "                           = $PYTHON"
}

ex_log() { echo "== [$(date +%H:%M:%S)] $*"; }

ex_has_checkpoint() {
  [ -f "$1/latest_checkpointed_iteration.txt" ]
}

ex_latest_iteration() {
  if ex_has_checkpoint "$1"; then cat "$1/latest_checkpointed_iteration.txt"; else echo none; fi
}

ex_load_dir() {  # SAVE INIT: resume from SAVE if it has a checkpoint, else start from INIT (may be empty)
  if ex_has_checkpoint "$1"; then echo "$1"; else echo "${2:-}"; fi
}

ex_wait_for_checkpoint() {  # DIR SECONDS: nodes other than rank 0 wait for rank 0's conversion (shared FS)
  local waited=0
  until ex_has_checkpoint "$1"; do
    if [ "$waited" -ge "$2" ]; then echo "error: $1 has no checkpoint after ${2}s" >&2; return 1; fi
    sleep 10; waited=$((waited + 10))
  done
}

ex_torchrun() {
  local rdzv=(--nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK"
              --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
  ex_log "torchrun ${rdzv[*]} pretrain_llama.py $*"
  "$PYTHON" -m torch.distributed.run "${rdzv[@]}" pretrain_llama.py "$@"
}

ex_smoke_tokenizer() {  # DIR -> echoes DIR/smoke.model
  local dir=$1
  if [ ! -f "$dir/smoke.model" ]; then
    ex_log "training a 490-piece sentencepiece tokenizer on data/corpus" >&2
    "$PYTHON" tools/train_tokenizer.py --input data/corpus/english.jsonl data/corpus/code.jsonl \
      --model-prefix "$dir/smoke" --vocab-size 490 --workers 2 --max-sentences 2000 >&2
  fi
  echo "$dir/smoke.model"
}

ex_smoke_neox_tokenizer() {  # DIR -> echoes DIR (holding tokenizer.json, as DCLM ships GPT-NeoX-20B's)
  local dir=$1
  if [ ! -f "$dir/tokenizer.json" ]; then
    ex_log "training a 384-token GPT-NeoX-style byte-level BPE on data/corpus" >&2
    "$PYTHON" tools/train_tokenizer.py --type bpe --input data/corpus/english.jsonl data/corpus/code.jsonl \
      --output-dir "$dir" --vocab-size 384 >&2
  fi
  echo "$dir"
}

ex_smoke_preprocess() {  # DIR TOKENIZER [SPECIAL_TOKENS]; both parts in parallel
  local dir=$1 tok=$2 special=${3:-} part pids=() extra=() type=SentencePieceTokenizer
  [ -n "$special" ] && extra=(--special-tokens "$special")
  [ -d "$tok" ] && type=HuggingFaceTokenizer  # a directory with tokenizer.json (GPT-NeoX style)
  for part in english code; do
    if [ ! -f "$dir/${part}_text_document.idx" ]; then
      ex_log "preprocessing data/corpus/$part.jsonl"
      "$PYTHON" tools/preprocess_data.py --input "data/corpus/$part.jsonl" --output-prefix "$dir/$part" \
        --tokenizer-type "$type" --tokenizer-model "$tok" "${extra[@]}" \
        --append-eod --workers 1 --no-progress &
      pids+=($!)
    fi
  done
  local pid
  for pid in "${pids[@]}"; do wait "$pid"; done
}

ex_export_hf() {  # LOAD OUT [extra convert_to_hf flags]
  local load=$1 out=$2; shift 2
  ex_log "exporting $load (iteration $(ex_latest_iteration "$load")) to Hugging Face format: $out"
  "$PYTHON" tools/convert_to_hf.py --load "$load" --out "$out" --overwrite --no-progress "$@"
}
