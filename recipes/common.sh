# Sourced by every recipe (recipes/tableN.sh): arguments, the sweep and the report.
#
#   recipes/tableN.sh small [out=DIR] [-- HYDRA_OVERRIDES...]
#   recipes/tableN.sh full  [criteo=/x/train.txt] [avazu=/x/train.csv] [out=DIR] [-- HYDRA_OVERRIDES...]
#
# small: the built-in synthetic data (experiment=small_synthetic, 200,000 rows), minutes on 2 cores.
# full:  the real files with the paper's settings (data=criteo / data=avazu); the paths come from
#        the criteo=/avazu= arguments or the CRITEO / AVAZU environment variables; each dataset
#        whose path is given is run.
# out:   where the sweeps and the table go (default multirun/recipes/tableN/MODE, git-ignored);
#        each dataset's sweep lives in its own subdirectory (synthetic/, criteo/, avazu/), which a
#        new run of the same recipe and dataset replaces.
# Overrides after `--` are appended to every lightning-afm call (e.g. -- trainer.max_epochs=...).
# Environment: LIGHTNING_AFM_BIN (directory of the lightning-afm scripts; default: the repo's
# .venv/bin, else the PATH).
set -euo pipefail

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$RECIPES_DIR")"

_usage() {
  # The recipe's header comment (from line 2 to the first blank line) is its help.
  sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
  exit "${1:-0}"
}

_tool() {  # _tool SCRIPT MODULE: the command running a console script (or its python -m fallback)
  local dir="${LIGHTNING_AFM_BIN:-$ROOT/.venv/bin}"
  if [[ -x "$dir/$1" ]]; then
    echo "$dir/$1"
  elif [[ -x "$dir/python" ]]; then
    echo "$dir/python -m $2"  # the package is there but its scripts are not (yet) installed
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    echo "python3 -m $2"
  fi
}

# recipe_init TABLE "$@": parse the arguments; sets MODE, OUT, CRITEO, AVAZU, EXTRA, COMMAND.
recipe_init() {
  TABLE=$1
  shift
  COMMAND="recipes/$TABLE.sh $*"
  MODE=""
  OUT=""
  EXTRA=()
  CRITEO=${CRITEO:-}
  AVAZU=${AVAZU:-}
  while (($#)); do
    case "$1" in
      small | full) MODE=$1 ;;
      out=*) OUT=${1#out=} ;;
      criteo=*) CRITEO=${1#criteo=} ;;
      avazu=*) AVAZU=${1#avazu=} ;;
      -h | --help) _usage 0 ;;
      --)
        shift
        EXTRA=("$@")
        break
        ;;
      *)
        echo "$TABLE: unknown argument '$1' (expected small, full, out=DIR, criteo=PATH, avazu=PATH, -- OVERRIDES)" >&2
        exit 2
        ;;
    esac
    shift
  done
  if [[ -z $MODE ]]; then
    echo "$TABLE: say which mode: 'small' (synthetic data, minutes) or 'full' (the real files); --help for more" >&2
    exit 2
  fi
  if [[ $MODE == full ]]; then
    if [[ -z $CRITEO && -z $AVAZU ]]; then
      echo "$TABLE: full mode needs the data: criteo=/x/train.txt and/or avazu=/x/train.csv (or CRITEO=/AVAZU= in the environment)" >&2
      exit 2
    fi
    local path
    for path in $CRITEO $AVAZU; do
      [[ -f $path ]] || { echo "$TABLE: no such file: $path" >&2; exit 2; }
    done
  fi
  OUT=${OUT:-$ROOT/multirun/recipes/$TABLE/$MODE}
  mkdir -p "$OUT"
  OUT="$(cd "$OUT" && pwd)"
  LAFM=$(_tool lightning-afm lightning_afm)
  REPORT=$(_tool lightning-afm-report lightning_afm.report)
  BENCH=$(_tool lightning-afm-bench lightning_afm.bench)
  START=$(date +%s)
}

# Settings every run of every recipe shares: no progress bars, no checkpoints, one directory per job.
# ++: compression is null while Hydra composes a sweep over compression=... (the jobs then set it)
COMMON=(trainer.enable_progress_bar=false trainer.enable_model_summary=false ++compression.progress=false
  save_checkpoint=false 'hydra.sweep.subdir=${hydra.job.num}')

# The data arguments of each dataset (full mode adds the path and quiet preprocessing). The
# recipes reproduce the paper, so they finetune as it does (protocol=paper: one epoch, the last
# state kept) and, in full mode, split as it does (no validation rows).
data_args() {  # data_args DATASET
  case "$1" in
    synthetic) echo "experiment=small_synthetic protocol=paper" ;;
    criteo) echo "data=criteo data.path=$CRITEO data.val_fraction=0 data.progress=false protocol=paper" ;;
    avazu) echo "data=avazu data.path=$AVAZU data.val_fraction=0 data.progress=false protocol=paper" ;;
    *) echo "unknown dataset $1" >&2; return 2 ;;
  esac
}

# The datasets this invocation runs: synthetic in small mode; those with a path in full mode.
datasets() {
  if [[ $MODE == small ]]; then
    echo synthetic
  else
    [[ -n $CRITEO ]] && echo criteo
    [[ -n $AVAZU ]] && echo avazu
    true
  fi
}

_fresh_dir() {  # replace a previous sweep of ours; never anything else
  local dir=$1
  if [[ -e $dir ]]; then
    if [[ -f $dir/multirun.yaml || -f $dir/bench.json || -z "$(ls -A "$dir")" ]]; then
      rm -rf "$dir"
    else
      echo "$TABLE: $dir exists and is not a sweep of this recipe; choose another out=" >&2
      exit 2
    fi
  fi
  mkdir -p "$dir"
}

# sweep NAME OVERRIDES...: one Hydra multirun into $OUT/NAME (its output in $OUT/NAME.log).
sweep() {
  local name=$1
  shift
  local dir="$OUT/$name" log="$OUT/$name.log" started
  _fresh_dir "$dir"
  started=$(date +%s)
  echo "[$TABLE] lightning-afm -m $* ${EXTRA[*]:-}  (log: $log)" >&2
  # shellcheck disable=SC2086  # LAFM may be "python3 -m lightning_afm"
  if ! $LAFM -m "hydra.sweep.dir=$dir" "${COMMON[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"$log" 2>&1; then
    echo "[$TABLE] the sweep failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  echo "[$TABLE]   done in $(($(date +%s) - started)) s: $(find "$dir" -name summary.json | wc -l) runs" >&2
}

# bench NAME OVERRIDES...: lightning-afm-bench into $OUT/NAME (table2's throughput columns).
# A failed benchmark is reported and leaves the table without those columns.
bench() {
  local name=$1
  shift
  local dir="$OUT/$name" log="$OUT/$name.log"
  _fresh_dir "$dir"
  echo "[$TABLE] lightning-afm-bench $* out=$dir  (log: $log)" >&2
  # shellcheck disable=SC2086
  if ! $BENCH "$@" "out=$dir" >"$log" 2>&1; then
    echo "[$TABLE] warning: the benchmark failed (the table goes without throughput); the end of $log:" >&2
    tail -n 15 "$log" >&2
    rm -rf "$dir"
  fi
}

# report: the table from everything under $OUT, with the command and wall time recorded.
report() {
  # shellcheck disable=SC2086
  $REPORT "$TABLE" "$OUT" --out "$OUT" --command "$COMMAND" --wall-s "$(($(date +%s) - START))" ${REPORT_ARGS:-}
}
