#!/usr/bin/env bash
# One bounded run of everything camlib has to verify on a GPU (issue 18), written under one folder.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--out DIR] [--budget SECONDS] [sizes...]
#   benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu-check     # the CPU dry run
#   benchmarks/gpu_check.sh --help
#
# Phases, in this order, each under its own time limit and all of them under --budget (360 s by
# default): a hang or a failure in one phase is logged and the next phase runs; the script exits
# non-zero at the end if any phase failed, timed out or was skipped for lack of budget.
#
#   device           what the run sees: torch, CUDA, the GPU (nvidia-smi -L when there)
#   install          pip install --no-deps -e . and ttach, grad-cam 1.5.7, torchcam 0.5.0 from the
#                    wheels in --wheels (no network: --no-index); default on with --device cuda only
#                    (benchmarks/fetch_wheels.sh puts the wheels there, on a machine with a network)
#   tests            the CUDA tests: pytest -m gpu -x (they skip without CUDA)
#   bench_gradient   GradCAM, GradCAM++ at --batch, --size against grad-cam and torchcam
#   bench_scorecam   ScoreCAM at --scorecam-batch (every library: --scorecam-chunk masked inputs a forward)
#   bench_ablation   AblationCAM at --ablation-batch (camlib and grad-cam; torchcam has none)
#   autocast         GradCAM, GradCAM++ under torch.autocast float16 and bfloat16 against float32
#   explain          camlib explain on --images generated images against bare inference
#
# The benchmarks are benchmarks/bench_cam.py (timings synchronised with the device, interleaved
# rounds, medians; on CUDA the peak extra torch.cuda.max_memory_allocated of every call) and
# benchmarks/bench_explain.py. Written under the output folder (--out, else $OUT, else
# out/gpu-check-DATE), four files, so that a runner returning at most eight files gets them all:
#
#   gpu_check.log    everything printed          summary.md    phases, goals and every table
#   summary.json     phases, goals and results   raw.tar.gz    each phase's log, JSON and markdown
set -u -o pipefail

usage() { sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; echo; cat <<'EOF'
Options (defaults for --device cuda; --tiny gives the small sizes of a CPU dry run):
  --device cuda|cpu      device of the tests and benchmarks (default cuda)
  --out DIR              output folder (default $OUT, else out/gpu-check-DATE)
  --budget SECONDS       the whole run's time limit (default 360)
  --phases LIST          comma-separated subset of the phases above (default: all)
  --model NAME           torchvision model of every benchmark (default resnet50)
  --batch N              gradient methods' and autocast batch (default 64)
  --size PX              input size (default 224)
  --rounds N             timed rounds of the gradient and autocast benchmarks (default 5)
  --scorecam-batch N     ScoreCAM images per call (default 4)
  --scorecam-size PX     ScoreCAM input size (default: --size)
  --scorecam-chunk N     masked inputs per forward, all libraries (default 256)
  --ablation-batch N     AblationCAM images per call (default 8)
  --ablation-chunk N     ablated copies per forward, both libraries (default 256)
  --heavy-rounds N       timed rounds of ScoreCAM and AblationCAM (default 2)
  --images N             images generated for camlib explain (default 2000)
  --explain-batch N      camlib explain batch (default 64)
  --workers N            DataLoader workers of camlib explain and bare inference (default 8)
  --explain-rounds N     rounds of the explain benchmark (default 2)
  --wheels DIR           folder of the wheels the install phase uses (default .wheels)
  --install/--no-install run or skip the install phase (default: run with --device cuda only)
  --keep-raw             keep the raw/ folder beside raw.tar.gz
  --tiny                 small sizes for a CPU dry run (resnet18, batch 2, 64 px, ScoreCAM 1 image of
                         32 px, 24 images, 1 round)
  --dry-run              print the phases' commands and limits, run nothing
Environment: PYTHON (default python3) is the interpreter of every phase.
EOF
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
PYTHON="${PYTHON:-python3}"

device=cuda out="${OUT:-}" budget=360 phases="" model=resnet50 batch=64 size=224 rounds=5
scorecam_batch=4 scorecam_size="" scorecam_chunk=256 ablation_batch=8 ablation_chunk=256 heavy_rounds=2
images=2000 explain_batch=64 workers=8 explain_rounds=2 wheels="$repo/.wheels" install=auto
keep_raw=0 tiny=0 dry_run=0
all_phases="device install tests bench_gradient bench_scorecam bench_ablation autocast explain"

need() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || { echo "gpu_check.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) need "$@"; device="$2"; shift 2 ;;
    --out) need "$@"; out="$2"; shift 2 ;;
    --budget) need "$@"; budget="$2"; shift 2 ;;
    --phases) need "$@"; phases="${2//,/ }"; shift 2 ;;
    --model) need "$@"; model="$2"; shift 2 ;;
    --batch) need "$@"; batch="$2"; shift 2 ;;
    --size) need "$@"; size="$2"; shift 2 ;;
    --rounds) need "$@"; rounds="$2"; shift 2 ;;
    --scorecam-batch) need "$@"; scorecam_batch="$2"; shift 2 ;;
    --scorecam-size) need "$@"; scorecam_size="$2"; shift 2 ;;
    --scorecam-chunk) need "$@"; scorecam_chunk="$2"; shift 2 ;;
    --ablation-batch) need "$@"; ablation_batch="$2"; shift 2 ;;
    --ablation-chunk) need "$@"; ablation_chunk="$2"; shift 2 ;;
    --heavy-rounds) need "$@"; heavy_rounds="$2"; shift 2 ;;
    --images) need "$@"; images="$2"; shift 2 ;;
    --explain-batch) need "$@"; explain_batch="$2"; shift 2 ;;
    --workers) need "$@"; workers="$2"; shift 2 ;;
    --explain-rounds) need "$@"; explain_rounds="$2"; shift 2 ;;
    --wheels) need "$@"; wheels="$(cd "$2" 2>/dev/null && pwd || echo "$2")"; shift 2 ;;
    --install) install=1; shift ;;
    --no-install) install=0; shift ;;
    --keep-raw) keep_raw=1; shift ;;
    --tiny)
      tiny=1 model=resnet18 batch=2 size=64 rounds=1 scorecam_batch=1 scorecam_size=32 scorecam_chunk=64 ablation_batch=1
      ablation_chunk=128 heavy_rounds=1 images=24 explain_batch=8 workers=1 explain_rounds=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
# (--tiny sets the sizes where it stands: options after it win over it, options before it do not.)
scorecam_size="${scorecam_size:-$size}"
case "$device" in cpu|cuda|cuda:[0-9]*) ;; *) echo "gpu_check.sh: --device must be cpu or cuda, got '$device'" >&2; exit 2 ;; esac
for value in "$budget" "$batch" "$size" "$rounds" "$scorecam_batch" "$scorecam_size" "$scorecam_chunk" "$ablation_batch" \
  "$ablation_chunk" "$heavy_rounds" "$images" "$explain_batch" "$workers" "$explain_rounds"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: expected a whole number, got '$value'" >&2; exit 2; }
done
phases="${phases:-$all_phases}"
for p in $phases; do
  [[ " $all_phases " == *" $p "* ]] || { echo "gpu_check.sh: unknown phase '$p' (phases: $all_phases)" >&2; exit 2; }
done
if [[ "$install" == auto ]]; then [[ "$device" == cuda* ]] && install=1 || install=0; fi
[[ -n "$out" ]] || out="$repo/out/gpu-check-$(date -u +%Y%m%d-%H%M%S)"

# Each phase: a time limit in seconds and a command (run with bash -c, in the repository root).
declare -A limit command
bench="\"\$PYTHON\" benchmarks/bench_cam.py --device $device"
limit[device]=30
command[device]="\"\$PYTHON\" - <<'PY'
import os, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA build', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print('CPUs', os.cpu_count(), '|', platform.platform())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f'cuda:{i}', p.name, f'{p.total_memory / 2**30:.1f} GiB', f'capability {p.major}.{p.minor}',
              f'{p.multi_processor_count} SMs')
    print('TF32 matmul', torch.backends.cuda.matmul.allow_tf32, '| TF32 cuDNN', torch.backends.cudnn.allow_tf32)
else:
    print('CUDA not available')
if '$device'.startswith('cuda') and not torch.cuda.is_available():
    raise SystemExit('--device $device, but torch sees no CUDA device')
PY
command -v nvidia-smi >/dev/null && nvidia-smi -L || true"
limit[install]=60
command[install]="unset PYTHONPATH; failed=0
ls -l \"$wheels\"
\"\$PYTHON\" -m pip install --no-deps --no-index --find-links \"$wheels\" ttach grad-cam==1.5.7 torchcam==0.5.0 || failed=1
\"\$PYTHON\" -m pip install --no-deps --no-index --no-build-isolation -e . || {
  echo 'editable install without build isolation failed; again with it (setuptools, wheel, packaging from $wheels)'
  \"\$PYTHON\" -m pip install --no-deps --no-index --find-links \"$wheels\" -e .; } || failed=1
cd /  # import from the installation, not from the repository root
\"\$PYTHON\" -c 'import sys; from importlib.metadata import version
import camlib, pytorch_grad_cam, torchcam, ttach
print(\"camlib\", camlib.__version__, \"from\", camlib.__file__)
print(\"grad-cam\", version(\"grad-cam\"), \"| torchcam\", version(\"torchcam\"), \"| ttach\", version(\"ttach\"))
assert camlib.__file__.startswith(sys.argv[1]), f\"camlib imported from {camlib.__file__}, not {sys.argv[1]}\"
assert (version(\"grad-cam\"), version(\"torchcam\")) == (\"1.5.7\", \"0.5.0\")' \"$repo/\" || failed=1
exit \$failed"
limit[tests]=100
command[tests]="\"\$PYTHON\" -m pytest tests -m gpu -x -q -rs -p no:cacheprovider --junitxml=\"\$RAW/tests.xml\""
limit[bench_gradient]=60
command[bench_gradient]="$bench --suites gradient --models $model --batches $batch --size $size \
--methods GradCAM GradCAM++ --rounds $rounds --out \"\$RAW/bench_gradient\""
limit[bench_scorecam]=75
command[bench_scorecam]="$bench --suites scorecam --scorecam-model $model --scorecam-batch $scorecam_batch \
--scorecam-size $scorecam_size --scorecam-chunk $scorecam_chunk --scorecam-rounds $heavy_rounds --out \"\$RAW/bench_scorecam\""
limit[bench_ablation]=45
command[bench_ablation]="$bench --suites ablation --models $model --ablation-batch $ablation_batch --size $size \
--ablation-batch-size $ablation_chunk --ablation-rounds $heavy_rounds --out \"\$RAW/bench_ablation\""
limit[autocast]=40
command[autocast]="$bench --suites autocast --models $model --batches $batch --size $size \
--methods GradCAM GradCAM++ --rounds $(( rounds < 3 ? rounds : 3 )) --out \"\$RAW/autocast\" && \"\$PYTHON\" -c '
import json, sys
rows = json.load(open(sys.argv[1]))[\"results\"]
bad = [r[\"method\"] + \" \" + r[\"dtype\"] for r in rows if not r[\"ok\"]]
sys.exit(\"autocast maps not close to float32: \" + \", \".join(bad) if bad else 0)' \"\$RAW/autocast.json\""
limit[explain]=120
command[explain]="\"\$PYTHON\" benchmarks/bench_explain.py --device $device --model $model --size $size \
--images $images --batch-size $explain_batch --workers $workers --write-threads 4 --rounds $explain_rounds \
--json \"\$RAW/explain.json\" --markdown \"\$RAW/explain.md\""

run_phases=""
for p in $all_phases; do
  [[ " $phases " == *" $p "* ]] || continue
  [[ "$p" == install && "$install" == 0 ]] && continue
  run_phases+="$p "
done

if [[ "$dry_run" == 1 ]]; then
  echo "device $device, budget ${budget}s, output $out, python $PYTHON"
  for p in $run_phases; do printf '\n== %s (limit %ss)\n%s\n' "$p" "${limit[$p]}" "${command[$p]}"; done
  exit 0
fi

mkdir -p "$out/raw" || exit 2
out="$(cd "$out" && pwd)"
export RAW="$out/raw" PYTHON PYTHONUNBUFFERED=1 CAMLIB_DISABLE_PROGRESS=1
# camlib from this checkout in every phase after install (the install phase checks the install itself)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$out/gpu_check.log") 2>&1
tee_pid=$!
finish() {  # the exit status; gpu_check.log complete before the script returns
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$1"
}

started=$(date +%s)
deadline=$(( started + budget ))
reserve=15  # seconds kept for the summary
: >"$RAW/phases.tsv"
echo "gpu_check.sh: device $device, budget ${budget}s, phases: $run_phases"
echo "  model $model, batch $batch, ${size}px, rounds $rounds; ScoreCAM batch $scorecam_batch, ${scorecam_size}px (chunk $scorecam_chunk);" \
  "AblationCAM batch $ablation_batch (chunk $ablation_chunk); explain $images images, batch $explain_batch, $workers workers"
echo "  output $out; $(git -C "$repo" log -1 --format='commit %h %s' 2>/dev/null)"

for p in $run_phases; do
  now=$(date +%s)
  left=$(( deadline - reserve - now ))
  t=${limit[$p]}
  (( left < t )) && t=$left
  if (( t < 5 )); then
    echo "== $p: SKIPPED, ${left}s of the budget left"
    printf '%s\tskipped\t-\t0\t%s\n' "$p" "${limit[$p]}" >>"$RAW/phases.tsv"
    continue
  fi
  echo "== $p (limit ${t}s) $(date -u +%H:%M:%S)"
  begin=$(date +%s.%N)
  timeout --kill-after=10 "$t" bash -c "${command[$p]}" 2>&1 | tee "$RAW/$p.log"
  rc=${PIPESTATUS[0]}
  seconds=$(awk -v a="$begin" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "== $p: $status (exit $rc) in ${seconds}s"
  printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$status" "$rc" "$seconds" "$t" >>"$RAW/phases.tsv"
done

total=$(( $(date +%s) - started ))
"$PYTHON" - "$out" "$device" "$total" "$budget" <<'PY'
"""summary.md and summary.json: the phases, the goals of issue 18, and every table."""
import glob
import json
import os
import sys

out, device, total, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
raw = os.path.join(out, "raw")
phases = []
for line in open(os.path.join(raw, "phases.tsv"), encoding="utf-8"):
    name, status, rc, seconds, limit = line.rstrip("\n").split("\t")
    phases.append({"phase": name, "status": status, "exit": rc, "seconds": float(seconds), "limit_s": int(limit)})
results = {}
for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
    try:
        results[os.path.basename(path)[:-5]] = json.load(open(path, encoding="utf-8"))
    except ValueError as error:
        results[os.path.basename(path)[:-5]] = {"error": str(error)}

def rows(name, suite, **match):
    data = results.get(name, {}).get("results", [])
    return [r for r in data if r.get("suite") == suite and all(r.get(k) == v for k, v in match.items())]

goals = []
def goal(text, value, passed):
    goals.append({"goal": text, "measured": value, "met": passed})

for r in rows("bench_gradient", "gradient", method="GradCAM"):
    where = f"{r['model']} b{r['batch']} {r['size']}px"
    goal(f"GradCAM {where}: at most 1.1x one inference forward", f"{r['camlib_x_floor']:.2f}x",
         r["camlib_x_floor"] <= 1.1)
    if "grad-cam_s" in r:
        goal(f"GradCAM {where}: at least 3x faster than grad-cam", f"{r['grad-cam_s'] / r['camlib_s']:.2f}x",
             r["grad-cam_s"] / r["camlib_s"] >= 3)
    if "torchcam_s" in r:
        goal(f"GradCAM {where}: faster than torchcam", f"{r['torchcam_s'] / r['camlib_s']:.2f}x",
             r["torchcam_s"] > r["camlib_s"])
for r in rows("bench_scorecam", "scorecam"):
    where = f"{r['model']} b{r['batch']} {r['size']}px"
    if "torchcam_s" in r:
        goal(f"ScoreCAM {where}: not slower than torchcam", f"{r['torchcam_s'] / r['camlib_s']:.2f}x",
             r["camlib_s"] <= r["torchcam_s"])
    if "torchcam_peak_mib" in r:
        goal(f"ScoreCAM {where}: less peak GPU memory than torchcam",
             f"{r['camlib_peak_mib']:.0f} vs {r['torchcam_peak_mib']:.0f} MiB",
             r["camlib_peak_mib"] < r["torchcam_peak_mib"])
explain = results.get("explain", {})
if "ratio" in explain:
    goal(f"camlib explain ({explain['images']} images, {explain['model']}): at least 0.8x bare inference",
         f"{explain['ratio']:.2f}x", explain["ratio"] >= 0.8)

failed = [p["phase"] for p in phases if p["status"] != "ok"]
md = [f"# gpu_check: device {device}", "",
      f"{'All phases passed' if not failed else 'Not passed: ' + ', '.join(failed)}; {total} s of a {budget} s budget.",
      "", "| phase | status | seconds | limit |", "|---|---|---:|---:|"]
md += [f"| {p['phase']} | {p['status']} | {p['seconds']:.1f} | {p['limit_s']} |" for p in phases]
device_log = os.path.join(raw, "device.log")
if os.path.exists(device_log):
    md += ["", "```", open(device_log, encoding="utf-8", errors="replace").read().strip(), "```"]
tests_xml = os.path.join(raw, "tests.xml")
if os.path.exists(tests_xml):
    import xml.etree.ElementTree as ET

    suite = ET.parse(tests_xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    results["tests"] = counts
    md += ["", f"CUDA tests (`pytest -m gpu -x`): {counts['tests']} run, {counts['failures']} failed, "
           f"{counts['errors']} errors, {counts['skipped']} skipped."]
if goals:
    md += ["", "## Goals (issue 18)" + ("" if device.startswith("cuda") else ": not meaningful off the GPU"), "",
           "| goal | measured | met |", "|---|---:|---|"]
    md += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in goals]
for name in ("bench_gradient", "bench_scorecam", "bench_ablation", "autocast", "explain"):
    path = os.path.join(raw, name + ".md")
    if os.path.exists(path):
        md += ["", f"## {name}", "", open(path, encoding="utf-8").read().strip()]
with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as handle:
    handle.write("\n".join(md) + "\n")
with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
    json.dump({"device": device, "seconds": total, "budget_s": budget, "phases": phases, "goals": goals,
               "results": results}, handle, indent=2)
print("\n".join(md))
PY
summary_rc=$?
failed=$(awk -F'\t' '$2 != "ok" { printf "%s(%s) ", $1, $2 }' "$RAW/phases.tsv")
tar -czf "$out/raw.tar.gz" -C "$out" raw && { [[ "$keep_raw" == 1 ]] || rm -rf "$RAW"; }
echo
echo "gpu_check.sh: ${total}s; written to $out: $(cd "$out" && ls | tr '\n' ' ')"
if [[ -n "$failed" || $summary_rc != 0 ]]; then
  echo "gpu_check.sh: FAILED: ${failed:-summary}"
  finish 1
fi
echo "gpu_check.sh: all phases passed"
finish 0
