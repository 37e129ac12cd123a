#!/usr/bin/env bash
# Table 16: wall time of the baseline's training and of each AFM stage (statistics pass, swap,
# finetune, evaluations) for the seven models (line 1140-1146, 1160-1175).
#
#   recipes/table16.sh small                                  # synthetic data (about 10 min on 2 cores)
#   recipes/table16.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# One compression=afm run per model and dataset; the compression callback times every piece
# (AFMCompressionCallback's docstring says what each figure includes) and the table shows them in
# the paper's layout (baseline training against each stage's compression time) and piece by piece.
# The times are this machine's: the table's header names it (the paper used one 3090 GPU, so run
# full mode with trainer=gpu, e.g. `-- trainer=gpu`, for comparable figures). The sweep runs its
# jobs one after another; other load on the machine shows in the figures. MODELS=deepfm,dcn picks
# models (default: all seven; the paper times DeepFM). Options: out=DIR, -- HYDRA_OVERRIDES (see
# recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table16 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-dcn,deepfm,nfm,autoint,fibinet,dcnv2,gdcn}" compression=afm
done
report
