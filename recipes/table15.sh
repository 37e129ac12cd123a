#!/usr/bin/env bash
# Table 15: the +AFM MLP finetune of DeepFM at the learning rates {1e-2, 5e-3, 1e-3, 5e-4, 1e-4}
# (line 1100-1106): train and test AUC and logloss after the finetune; PNG of both against the rate.
#
#   recipes/table15.sh small                                  # synthetic data (about 5 min on 2 cores)
#   recipes/table15.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Runs compression=afm_mlp (baseline epoch, AFM on MLP layers 2 and 3, finetune epoch) per rate
# (compression.mlp.lr: the finetune's rate; the baseline epoch keeps the model's), and scores the
# training rows too (compression.eval_splits=[train,val,test]: every training row in eval mode,
# before and after the finetune). The paper sweeps Criteo only; full mode runs every dataset given.
# RATES=1e-3,1e-4 picks rates; TRAIN_EVAL_ROWS=4000000 scores only the first 4M training rows
# (default: all); MODELS=dcn another model (default deepfm).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table15 "$@"

train_rows=()
[[ -n ${TRAIN_EVAL_ROWS:-} ]] && train_rows=("compression.train_eval_rows=$TRAIN_EVAL_ROWS")
for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_mlp \
    "compression.mlp.lr=${RATES:-1e-2,5e-3,1e-3,5e-4,1e-4}" "compression.eval_splits=[train,val,test]" \
    ${train_rows[@]+"${train_rows[@]}"}
done
report
