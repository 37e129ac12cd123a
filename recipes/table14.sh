#!/usr/bin/env bash
# Table 14: compression against training the small model from scratch, the paper's four lines
# (line 1214-1218): AFM on the MLP (compression=afm_mlp) against the same structure trained
# from random weights (scratch_mlp) for as many epochs (2), and AFM on the MLP and the
# embeddings (afm) against its structure from scratch (scratch, 3 epochs, and 1 epoch as the
# baseline).
#
#   recipes/table14.sh small                                  # synthetic data (about 5 min on 2 cores)
#   recipes/table14.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# From scratch uses the baseline's training settings (lr, dropout, batch size, no weight decay)
# for all its epochs; see lightning_afm/conf/compression/scratch.yaml. MODELS=deepfm,dcn picks models
# (default deepfm). Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table14 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_mlp,afm,scratch_mlp,scratch
  # shellcheck disable=SC2046
  sweep "${ds}_scratch_1_epoch" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=scratch trainer.max_epochs=1
done
report
