#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU that we hold for a few minutes.
#
# From the repository root (wherever it is called from), it:
#   1. uses .venv if it imports tideflow, torch and Avalanche, else runs `make install`
#      (nothing else is installed: the machine may have no internet);
#   2. says plainly whether torch sees CUDA (torch build, CUDA version, device, nvidia-smi);
#   3. runs bench/learning_cost.py --device cuda --ray-check (the Avalanche strategies on
#      the GPU, then an Avalanche learn step on the Ray runner with num_gpus=1, and 0 as a
#      control, printing whether the actor saw CUDA and where the model sat); first,
#      because it is what the machine is for;
#   4. times the image learners' learn on the CPU and, where there is one, on CUDA
#      (bench/image_throughput.py): PRD (images 28x28 through its MLP encoder, and 1280-value
#      feature rows), DKVB (1280-value rows, the toy codebooks and the paper's 256 x 4096 x 14),
#      DST (images 28x28, density 0.2 and dense) and EAR (images 28x28 with its encoder frozen,
#      1280-value rows without one), on seeded synthetic rows of 10 classes (no data set needed);
#      samples/s of learn, set-up (key fit, encoder phase) apart, cuda/cpu ratio;
#   5. runs bench/learning_cost.py --device cpu, the CPU baseline on the same machine:
#      every strategy, or only the Avalanche ones when less than 150 s are left;
#   6. prints the CPU and GPU tables side by side (learning_cost.py --compare).
# JSON and a log go to $OUT when it is set, else bench/results/:
#   learning_cost_cpu.json, learning_cost_cuda.json, image_learners.json, gpu_check.log
#
# The whole run is kept under BUDGET_S seconds (default 430): every step gets a timeout
# from what is left, and learning_cost.py a --budget a little shorter, so that it skips
# the strategies it has no time for (reported as skipped) and still prints its table;
# its JSON is rewritten after every strategy. SCALE (default 1) scales both runs alike.
# Exit status: 0 all ran; 3 no CUDA (the CPU part ran and is reported); 2 no usable
# .venv; 1 a step failed or timed out.
set -u -o pipefail

BUDGET_S=${BUDGET_S:-430}
SCALE=${SCALE:-1}
START=$SECONDS
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

say() { printf '\n=== %s (t=%ds)\n' "$*" "$((SECONDS - START))"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }
# step timeout: at most $1 seconds, and never past the budget (keeping $2 s for what follows)
budget_for() { local t=$(( $(left) - $2 )); (( t > $1 )) && t=$1; (( t < 10 )) && t=10; echo "$t"; }

PY=.venv/bin/python
say "tideflow GPU check in $(pwd); results to $OUTDIR; budget ${BUDGET_S}s"

# found without importing them (imports alone take 10-30 s on a busy machine)
venv_ok() {
    [ -x "$PY" ] && "$PY" -c "import importlib.util as u, sys
sys.exit(0 if all(u.find_spec(m) for m in ('tideflow', 'torch', 'avalanche', 'river', 'ray', 'sklearn', 'ncps')) else 1)" \
        >/dev/null 2>&1
}
if venv_ok; then
    echo ".venv is usable"
else
    say "no usable .venv: make install (offline: only what pyproject.toml names)"
    timeout "$(budget_for 200 90)" make install PYTHON="${PYTHON:-python3}"
    if ! venv_ok; then
        echo "FAILED: .venv still cannot import tideflow, torch and avalanche after make install"
        exit 2
    fi
fi

say "what torch sees"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv \
    || echo "nvidia-smi: not found"
"$PY" - <<'EOF'
import torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuda available: {ok}")
if ok:
    print(f"device 0: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"{torch.cuda.device_count()} device(s)")
    x = torch.ones(1024, 1024, device="cuda")
    print(f"matmul on cuda ok: {float((x @ x).sum()):.0f}")
else:
    print("NO CUDA: torch.cuda.is_available() is False (no GPU, no driver, or a driver older than "
          f"this torch's CUDA {torch.version.cuda})")
raise SystemExit(0 if ok else 10)
EOF
rc=$?
HAVE_CUDA=$(( rc == 0 ? 1 : 0 ))
(( rc != 0 && rc != 10 )) && echo "the CUDA probe itself failed (exit $rc): treated as no CUDA"

status=0
CPU_JSON="$OUTDIR/learning_cost_cpu.json"
CUDA_JSON="$OUTDIR/learning_cost_cuda.json"

AVAL=aval-naive,aval-replay,aval-ewc,aval-lwf
if [ "$HAVE_CUDA" = 1 ]; then
    # the GPU part first: it is what this machine is for
    say "learning cost on CUDA (Avalanche strategies) and the Ray check (num_gpus=1, then 0)"
    t=$(budget_for 170 45)
    if ! timeout "$t" "$PY" bench/learning_cost.py --device cuda --scale "$SCALE" --budget $((t - 15)) \
            --strategies "$AVAL" --ray-check --json "$CUDA_JSON"; then
        echo "FAILED or timed out: learning_cost.py --device cuda --ray-check"
        status=1
        .venv/bin/ray stop --force >/dev/null 2>&1 || true  # the local Ray this run started, if it was cut off
    fi
fi

# the image learners (PRD, DKVB, DST, EAR): learn throughput on the CPU, then on CUDA when torch
# sees it (bench/image_throughput.py: one process; its --budget is the cases' time, the step's
# last 40 s are for its imports; every case gets an equal share and stops its timed batches when
# that is spent, and the JSON is rewritten after every case)
say "image learners (PRD, DKVB, DST, EAR): learn throughput on CPU$( [ "$HAVE_CUDA" = 1 ] && echo ' and CUDA')"
t=$(budget_for 120 60)
cuda_flag=()
[ "$HAVE_CUDA" = 1 ] && cuda_flag=(--cuda)
if ! timeout "$t" "$PY" bench/image_throughput.py "$OUTDIR/image_learners.json" ${cuda_flag[@]+"${cuda_flag[@]}"} \
        --budget $((t - 40)); then
    echo "FAILED or timed out: image learners' throughput"
    status=1
fi

# the CPU baseline on this same machine: every strategy when there is time, else the Avalanche ones
CPU_SET=all
(( $(left) < 150 )) && CPU_SET=$AVAL
say "learning cost on CPU ($CPU_SET; one subprocess each)"
cpu_args=(--device cpu --scale "$SCALE" --json "$CPU_JSON")
[ "$CPU_SET" != all ] && cpu_args+=(--strategies "$CPU_SET")
t=$(budget_for 240 10)
if ! timeout "$t" "$PY" bench/learning_cost.py "${cpu_args[@]}" --budget $((t - 15)); then
    echo "FAILED or timed out: learning_cost.py --device cpu"
    status=1
fi

if [ "$HAVE_CUDA" = 1 ]; then
    if [ -f "$CPU_JSON" ] && [ -f "$CUDA_JSON" ]; then
        say "CPU and GPU side by side"
        "$PY" bench/learning_cost.py --compare "$CPU_JSON" "$CUDA_JSON" || status=1
    fi
else
    say "NO CUDA: torch cannot use a GPU here; the GPU run and the Ray GPU check were skipped"
    (( status == 0 )) && status=3
fi

say "done in $((SECONDS - START)) s, exit status $status; files:"
ls -l "$OUTDIR"/learning_cost_*.json "$OUTDIR"/image_learners.json "$LOG" 2>/dev/null
exit "$status"
