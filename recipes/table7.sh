#!/usr/bin/env bash
# Table 7: AFM on the embeddings at ranks {2, 4, 8, 12} (Criteo, and the synthetic data: both
# have 16-wide tables) and {4, 8, 16, 32} (Avazu, 50-wide): AUC, logloss, parameters; PNG of
# AUC and logloss against the rank.
#
#   recipes/table7.sh small                                   # synthetic data (about 6 min on 2 cores)
#   recipes/table7.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Runs compression=afm_emb (baseline epoch, AFM on every table, finetune epoch) per rank.
# MODELS=dcn picks another model (default deepfm); RANKS=2,4 other ranks (all datasets).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table7 "$@"

for ds in $(datasets); do
  case $ds in
    avazu) ranks=${RANKS:-4,8,16,32} ;;
    *) ranks=${RANKS:-2,4,8,12} ;;
  esac
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_emb "compression.emb.rank=$ranks"
done
report
