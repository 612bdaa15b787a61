#!/usr/bin/env bash
# Measured training session on the lent nvidia-h200-x2 (2 H200, 32 cores), run from the repository
# root there. State lives in $DEVSTAGE (default /tmp/devstage: the device machine does not keep ignored
# folders of the checkout between calls, but /tmp survives while it stays warm); results go to $OUT.
#
#   stage DIR...  merge carried folders (whl/ cases/ meta/ site/ tar/) into $DEVSTAGE
#   prep          install the wheels, unpack the bundle, copy plans/split, nnU-Net preprocessing,
#                 write the 3 held-out cases as BraTS folders
#   ddp           compact U-Mamba Bot: 1 GPU vs --num-gpus 2 (global batch 2, and 4), about 3.5 min
#   train2        two architectures at once (one per GPU) under the demo's budget, then eval2
#   eval2         import each run as a package, segment the held-out cases on its GPU, Table I rows
#
# Settings (environment): MODELS ("model:plans model:plans"), BUDGET_S (470 s of epoch time), CALL_S (570:
# the call's wall-time limit, start-up included), EVAL_RESERVE_S (45), SAVE_EVERY (5), DA (12 augmentation workers per run),
# DDP_EPOCHS (4), DDP_ITERS (50); for a CPU rehearsal also DEVSTAGE, DS_ID, DS, N_CASES, VAL_CASES, ITERS,
# VAL_ITERS, DEVICE. See docs/training.md, section 7.
set -euo pipefail
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent machines (their KINDS.md): keep it so for every process started here
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
T0=$(date +%s)
ROOT=$PWD
S=${DEVSTAGE:-/tmp/devstage}
OUT=${OUT:-$S/out}
PY=${PY:-python3}
DS_ID=${DS_ID:-500}
D=${DS:-Dataset500_BraTS2018demo}
N_CASES=${N_CASES:-14}
VAL_CASES=${VAL_CASES:-"Brats18_2013_20_1 Brats18_CBICA_AME_1 Brats18_TCIA02_370_1"}
ITERS=${ITERS:-100}
VAL_ITERS=${VAL_ITERS:-20}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-"segmamba:nnUNetPlans mednext_s:nnUNetPlans"}
BUDGET_S=${BUDGET_S:-470}
CALL_S=${CALL_S:-570}
DA=${DA:-12}
export PYTHONPATH=$S/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export nnUNet_raw=$S/raw nnUNet_preprocessed=$S/pre nnUNet_results=$S/results
mkdir -p "$S" "$OUT"
BM="$PY -m BraTSMambaLib.cli"

stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( T0 + CALL_S - $(date +%s) )); }

do_stage() {
  [ $# -gt 0 ] || { echo "stage: name the carried folders" >&2; exit 2; }
  for d in "$@"; do
    [ -d "$d" ] || { echo "stage: $d is not a folder (was it carried?)" >&2; exit 2; }
    cp -a "$d"/. "$S"/
    stamp "staged $d ($(du -sh "$d" | cut -f1))"
  done
  for k in whl tar site cases meta; do [ -d "$S/$k" ] && echo "  $k: $(ls "$S/$k" | wc -l) entries, $(du -sh "$S/$k" | cut -f1)"; done
  return 0
}

do_prep() {
  stamp "install wheels into $S/site"
  if compgen -G "$S/whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$S/site" "$S"/whl/*.whl
  fi
  for t in "$S"/tar/*.tar.xz; do if [ -e "$t" ]; then tar -xJf "$t" -C "$S/site"; fi; done
  $PY -c "import SimpleITK, nnunetv2, monai, acvl_utils, blosc2, torch; print('SimpleITK', SimpleITK.Version_VersionString(), 'monai', monai.__version__, 'torch', torch.__version__, torch.cuda.device_count(), 'GPUs')"
  n=$(ls "$S"/cases/*.case.xz | wc -l)
  [ "$n" -eq "$N_CASES" ] || { echo "prep: $n of $N_CASES cases staged" >&2; exit 1; }
  stamp "unpack $n cases"
  rm -rf "$nnUNet_raw/$D"
  $PY -m BraTSMambaLib.training.bundle unpack "$nnUNet_raw/$D" "$S/cases"
  mkdir -p "$nnUNet_preprocessed/$D"
  cp "$S"/meta/*.json "$nnUNet_preprocessed/$D/"  # plans (default, compact, compactb4), fingerprint, split
  stamp "nnU-Net 3d_fullres preprocessing"
  $BM plan "$DS_ID" --skip-plan --processes ${PROCS:-16} > "$OUT/plan.log" 2>&1 || { tail -40 "$OUT/plan.log"; exit 1; }
  stamp "held-out cases as BraTS folders"
  rm -rf "$S/heldout"
  $PY -m BraTSMambaLib.training.convert export "$nnUNet_raw/$D" "$S/heldout" $VAL_CASES
  stamp "prep done"
}

# one compact U-Mamba Bot run for the DDP comparison: NAME GPUS PLANS
ddp_run() {
  local name=$1 gpus=$2 plans=$3 res=$S/ddp/$1
  rm -rf "$res"; mkdir -p "$res"
  stamp "ddp run $name: $gpus GPU(s), plans $plans"
  local t=$(date +%s)
  nnUNet_results=$res timeout -k 10 ${DDP_RUN_S:-110} $BM train "$DS_ID" --model umambabot --plans "$plans" --fold 0 \
    --epochs ${DDP_EPOCHS:-4} --iters ${DDP_ITERS:-50} --val-iters $(( ${DDP_ITERS:-50} / 5 )) --no-validation \
    --da-processes $DA --num-gpus "$gpus" > "$OUT/ddp_$name.log" 2>&1 || echo "  run $name exit $?"
  echo "$name $gpus $plans $(( $(date +%s) - t ))" >> "$S/ddp/runs.txt"
  stamp "ddp run $name done"
}

do_ddp() {
  rm -rf "$S/ddp"; mkdir -p "$S/ddp"
  ddp_run g1_b2 1 nnUNetPlans_compact
  ddp_run g2_b2 2 nnUNetPlans_compact
  ddp_run g2_b4 2 nnUNetPlans_compactb4
  $PY - "$S/ddp" "$OUT/ddp_summary" <<'EOF'
"""Throughput per run from status.jsonl (epochs after the first; the first carries start-up)."""
import json, statistics, sys
from pathlib import Path
from BraTSMambaLib.training.status import read_status
root, out = Path(sys.argv[1]), sys.argv[2]
rows = []
for line in (root / "runs.txt").read_text().split("\n"):
    if not line.strip():
        continue
    name, gpus, plans, wall = line.split()
    folds = list((root / name).glob("*/*/fold_0"))
    recs = read_status(folds[0]) if folds else []
    pf = list((root / name).glob(f"*/*{plans}*/plans.json"))
    gb = json.loads(pf[0].read_text())["configurations"]["3d_fullres"]["batch_size"] if pf else None
    steady = [r["epoch_s"] for r in recs[1:]] or [r["epoch_s"] for r in recs]
    it = recs[0]["iterations"] if recs else None
    med = statistics.median(steady) if steady else None
    losses = [r["train_loss"] for r in recs]
    rows.append({"run": name, "gpus": int(gpus), "plans": plans, "global_batch": gb,
                 "per_gpu_batch": gb / int(gpus) if gb else None, "epochs": len(recs), "iters_per_epoch": it,
                 "first_epoch_s": recs[0]["epoch_s"] if recs else None, "median_epoch_s": med,
                 "iters_per_s": round(it / med, 2) if med else None,
                 "patches_per_s": round(it * gb / med, 2) if med and gb else None,
                 "train_loss": losses, "loss_decreased": len(losses) > 1 and losses[-1] < losses[0],
                 "peak_gpu_mem_gb_rank0": max((r.get("peak_gpu_mem_gb") or 0) for r in recs) if recs else None,
                 "process_wall_s": int(wall), "finished": bool(folds) and (folds[0] / "checkpoint_final.pth").exists()})
base = next((r for r in rows if r["gpus"] == 1 and r["patches_per_s"]), None)
for r in rows:
    r["speedup_patches_vs_1gpu"] = round(r["patches_per_s"] / base["patches_per_s"], 2) \
        if base and r["patches_per_s"] else None
keys = ["run", "gpus", "global_batch", "per_gpu_batch", "epochs", "first_epoch_s", "median_epoch_s", "iters_per_s",
        "patches_per_s", "speedup_patches_vs_1gpu", "peak_gpu_mem_gb_rank0", "process_wall_s", "loss_decreased"]
md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
md += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
Path(out + ".md").write_text("\n".join(md) + "\n")
Path(out + ".json").write_text(json.dumps(rows, indent=2))
print("\n".join(md))
EOF
  (cd "$S/ddp" && find . \( -name runs.txt -o -name status.jsonl -o -name progress.png -o -name 'training_log_*.txt' \) \
    | tar -czf "$OUT/ddp_runs.tar.gz" -T -) || true
  stamp "ddp done"
}

# registry model -> nnU-Net trainer class (Testing/test_training_session.py checks this against TRAINERS)
declare -A TRAINER=([segmamba]=nnUNetTrainerSegMamba [umambabot]=nnUNetTrainerUMambaBot
  [umambaenc]=nnUNetTrainerUMambaEnc [vmunet3d]=nnUNetTrainerVMUNet3D [mednext_s]=nnUNetTrainerMedNeXt_S
  [mednext_b]=nnUNetTrainerMedNeXt_B [mednext_m]=nnUNetTrainerMedNeXt_M [mednext_l]=nnUNetTrainerMedNeXt_L
  [swinunetr]=nnUNetTrainerSwinUNETR)
run_dir() { echo "$nnUNet_results/$D/${TRAINER[$1]}__$2__3d_fullres"; }

do_train2() {
  local end_by=$(( T0 + CALL_S - ${EVAL_RESERVE_S:-45} )) pids=() gpu=0 m
  rm -rf "$S/train2"; mkdir -p "$S/train2"
  for spec in $MODELS; do
    m=${spec%%:*}
    rm -rf "$(run_dir "$m" "${spec#*:}")"
    stamp "train $m (plans ${spec#*:}) on GPU $gpu: budget $BUDGET_S s of epoch time, end by +$(( end_by - T0 )) s"
    CUDA_VISIBLE_DEVICES=$gpu BRATSMAMBA_END_BY=$end_by BRATSMAMBA_SAVE_EVERY=${SAVE_EVERY:-5} timeout -k 10 $(( end_by + 15 - $(date +%s) )) \
      $BM train "$DS_ID" --model "$m" --plans "${spec#*:}" --fold 0 --epochs 1000 --iters "$ITERS" --val-iters "$VAL_ITERS" \
      --time-budget "$BUDGET_S" --no-validation --da-processes "$DA" > "$S/train2/train_$m.log" 2>&1 &
    pids+=($!); gpu=$((gpu + 1))
  done
  for p in "${pids[@]}"; do wait "$p" || echo "  training pid $p exit $?"; done
  stamp "training done"
  do_eval2
}

do_eval2() {
  local gpu=0 pids=() m dirs=()
  mkdir -p "$S/train2"
  local t_eval=$(( $(left) - 12 ))
  [ "$t_eval" -gt 20 ] || { stamp "no time left for the evaluation: run eval2 in the next call"; t_eval=0; }
  for spec in $MODELS; do
    m=${spec%%:*}; dirs+=("$(run_dir "$m" "${spec#*:}")")
    if [ "$t_eval" -gt 0 ]; then
      stamp "eval $m on GPU $gpu (limit ${t_eval} s)"
      CUDA_VISIBLE_DEVICES=$gpu timeout -k 5 "$t_eval" $BM compare "${dirs[-1]}" --test-cases "$S/heldout" --fast \
        --device "$DEVICE" -o "$S/train2/table_$m" > "$S/train2/eval_$m.log" 2>&1 &
      pids+=($!)
    fi
    gpu=$((gpu + 1))
  done
  for p in "${pids[@]}"; do wait "$p" || echo "  eval pid $p exit $?"; done
  stamp "eval done"
  $PY - "$S/train2" "$OUT/train2_table" "${dirs[@]}" <<'EOF'
"""One Table I for the runs: the evaluated rows where eval finished, else the training columns."""
import json, sys
from pathlib import Path
from BraTSMambaLib.training.compare import fold_dirs, run_row, to_csv, to_markdown
work, out, runs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = []
for run in runs:
    tables = [p for p in work.glob("table_*.json") if json.loads(p.read_text())["rows"][0]["run"].split("/")[1]
              == Path(run).name]
    if tables:
        rows += json.loads(tables[0].read_text())["rows"]
    elif Path(run).is_dir():
        rows += [dict(run_row(f), note="no test columns (eval did not finish)") for f in fold_dirs(run)]
Path(out + ".md").write_text(to_markdown(rows))
Path(out + ".csv").write_text(to_csv(rows))
Path(out + ".json").write_text(json.dumps({"rows": rows}, indent=2))
print(to_markdown(rows))
EOF
  (cd "$S" && { find train2 -type f; for d in "${dirs[@]}"; do [ -d "$d/fold_0" ] && find "${d#$S/}/fold_0" -maxdepth 1 \
    \( -name status.jsonl -o -name progress.png -o -name 'training_log_*.txt' \); done; } \
    | tar -czf "$OUT/train2_runs.tar.gz" -T -) || true
  stamp "outputs: $(ls "$OUT" | tr '\n' ' ')"
}

cmd=${1:-}; shift || true
case "$cmd" in
  stage) do_stage "$@" ;;
  prep) do_prep ;;
  ddp) do_ddp ;;
  train2) do_train2 ;;
  eval2) do_eval2 ;;
  *) sed -n 2,14p "$0"; exit 2 ;;
esac 2>&1 | tee -a "$OUT/session_${cmd:-help}.log"
stamp "end $cmd"
