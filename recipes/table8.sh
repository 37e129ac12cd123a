#!/usr/bin/env bash
# Table 8: AFM on the MLP (layers 2 and 3) at ranks {32, 64, 96, 128} (Criteo, and the
# synthetic data: both have 3 x 400 MLPs) and {160, 320, 480, 640} (Avazu, 3 x 2000): AUC,
# logloss, parameters; PNG of AUC and logloss against the rank.
#
#   recipes/table8.sh small                                   # synthetic data (about 6 min on 2 cores)
#   recipes/table8.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Runs compression=afm_mlp (baseline epoch, AFM on MLP layers 2 and 3, finetune epoch) per rank.
# MODELS=dcn picks another model (default deepfm); RANKS=16,32 other ranks (all datasets).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table8 "$@"

for ds in $(datasets); do
  case $ds in
    avazu) ranks=${RANKS:-160,320,480,640} ;;
    *) ranks=${RANKS:-32,64,96,128} ;;
  esac
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_mlp "compression.mlp.rank=$ranks"
done
report
