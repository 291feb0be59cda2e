#!/usr/bin/env bash
# One-command GPU check: versions, build, `info`, the whole test suite on the GPU, the low-rank
# benchmark, the quantized-linear benchmark (+ dispatch tables), the whole-model benchmark
# (DeiT-B / SAM ViT-B configs), the low-rank MLP block benchmark, the dispatch tables rebuilt
# from this run's records (graph times), the plans of DeiT-B and SAM ViT-B on those tables, the
# kernel census's predictions beside this run's measurements, and one summary JSON.
# Everything lands in ${OUT} as at most 8 files, flat (the device runner brings back at most 8
# files, 2 folders deep):
#   console.log build.log pytest.log lowrank.jsonl quant.jsonl models.jsonl extras.tar.gz
#   gpu_check_summary.json
# extras.tar.gz holds the smaller outputs: dispatch_<gpu>.json (the benchmarks' table), the
# rebuilt tables (dispatch/<gpu>.json, dispatch/sm90.json), mlp_block.jsonl, the plans
# (plans/<model>_<config>.{json,txt}) and census/census_sm90.{json,md} (predicted vs measured).
# junit.xml stays in a temp folder (its pass/fail counts go into the summary; the failures
# themselves are in pytest.log) to make room for models.jsonl; the models plot is redrawn
# locally with `python benchmarks/plot.py models --results $OUT/models.jsonl`; every
# benchmark's tables with `python benchmarks/report.py BENCH FILE` (lowrank, quant, attention,
# mlp_block, models, latency_table), its plots with `python benchmarks/plot.py BENCH --results
# FILE` (lowrank, quant, attention, mlp_block, models).
# models.jsonl also holds the attention-op records of bench_attention.py (kind "attention").
# Peers for the quant benchmark (bitsandbytes, gemlite) come from wheels in .whl/ at the repo
# root when it exists (the GPU machine has no network; see benchmarks/README.md).
#
#   bash benchmarks/gpu_check.sh            # quick benchmark
#   GPU_CHECK_FULL=1 bash benchmarks/gpu_check.sh   # or --full: full benchmark sweep
#   GPU_CHECK_SKIP_BUILD=1 ...                       # reuse an installed build
#
# The whole script is sized to end within GPU_CHECK_BUDGET_S (default 480 s, so that a 15-minute
# device lease has room for a machine start and a short second call): each phase gets its own
# `timeout`, clipped so that the phases after it keep a minimum share (see the phase calls).
# The test phase uses pytest-xdist and pytest-timeout when the machine has them.
# A last phase runs compute-sanitizer memcheck over benchmarks/sanitize_cuda.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/results/gpu_run}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
FULL="${GPU_CHECK_FULL:-0}"
[[ "${1:-}" == "--full" ]] && FULL=1
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
START=$(date +%s)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
exec > >(tee -a "$OUT/console.log") 2>&1

PHASES="$TMP/phases.tsv"  # name rc seconds timeout
: >"$PHASES"

remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# phase NAME DEFAULT_TIMEOUT RESERVE_AFTER cmd...: run cmd under timeout, never abort the script.
# SIGINT first: pytest and the benchmark stop cleanly on it and still write their reports.
phase() {
  local name=$1 default=$2 reserve=$3
  shift 3
  local limit rc t0
  limit=$(($(remaining) - reserve))
  ((limit > default)) && limit=$default
  ((limit < 10)) && limit=10
  echo
  echo "=== [$name] timeout ${limit}s ($(date -u +%H:%M:%S)) ==="
  t0=$(date +%s)
  # timeout runs programs, not functions: the phase functions are exported to a child bash.
  if timeout -s INT -k 20 "$limit" bash -c '"$@"' _ "$@"; then rc=0; else rc=$?; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$PHASES"
  echo "=== [$name] rc=$rc in $(($(date +%s) - t0))s ==="
}

versions() {
  nvidia-smi || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton unavailable:", e)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
import importlib.metadata as md
for name in ("timm", "numpy", "segment-anything", "optuna", "pytest-xdist"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
EOF
  (nvcc --version || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version) 2>/dev/null | tail -2 || true
  git rev-parse HEAD 2>/dev/null || echo "commit ${GPU_CHECK_COMMIT:-unknown} (no .git here)"
}

build() {
  if [[ "${GPU_CHECK_SKIP_BUILD:-0}" == 1 ]]; then echo "build skipped (GPU_CHECK_SKIP_BUILD=1)"; return 0; fi
  CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . >"$OUT/build.log" 2>&1
  local rc=$?
  tail -5 "$OUT/build.log"
  return $rc
}

info() {
  "$PY" -m supernet_kernels.cli info || supernet-kernels info
}

tests() {
  # The suite runs on the GPU for real: no interpreter. No -x: we want every failure. With
  # pytest-xdist there (the device image has it), one worker per 1-2 cores: Triton's JIT and the
  # CPU-only tests are CPU-bound. pytest-timeout stops one hung test from eating the phase.
  local par=() paths extra
  read -r -a paths <<<"${GPU_CHECK_TESTS:-tests}"
  "$PY" -c "import xdist" 2>/dev/null && par+=(-n "${GPU_CHECK_WORKERS:-12}")
  "$PY" -c "import pytest_timeout" 2>/dev/null && par+=(--timeout 100)
  par+=(--durations=25)
  # GPU_CHECK_PYTEST_ARGS: extra flags, e.g. -rA (a PASSED line per test in pytest.log)
  read -r -a extra <<<"${GPU_CHECK_PYTEST_ARGS:-}"
  par+=("${extra[@]}")
  # Two passes: the tests that run kernels first, then the slow CPU-side ones (subprocesses,
  # whole pipelines; marker "slow"), so a timeout cuts the latter. Run 2 on an H100 ran out of
  # its 190 s with the kernel tests still in flight.
  local rc=0
  env -u TRITON_INTERPRET "$PY" -m pytest -q "${paths[@]}" -m "not slow" -p no:cacheprovider \
    "${par[@]}" --junitxml="$TMP/junit.xml" >"$OUT/pytest.log" 2>&1 || rc=$?
  env -u TRITON_INTERPRET "$PY" -m pytest -q "${paths[@]}" -m slow -p no:cacheprovider \
    "${par[@]}" --junitxml="$TMP/junit_slow.xml" >>"$OUT/pytest.log" 2>&1 || rc=$?
  grep -E "^(FAILED|ERROR) " "$OUT/pytest.log" | head -40
  tail -3 "$OUT/pytest.log"
  return $rc
}

sanitize() {
  # compute-sanitizer memcheck over one call of every kernel on odd shapes (bounds, not speed).
  local cs
  cs=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  [[ -x "$cs" ]] || { echo "compute-sanitizer not found"; return 0; }
  "$cs" --tool memcheck --error-exitcode 9 --print-limit 20 "$PY" benchmarks/sanitize_cuda.py
}

bench() {
  local limit=$1 mode=--quick
  [[ "$FULL" == 1 ]] && mode=""
  # Stop starting new shapes 30 s before the phase timeout, so results are always written.
  "$PY" benchmarks/bench_lowrank.py $mode --write-dispatch --out "$OUT" \
    --summary-json "$TMP/bench_summary.json" --time-budget-s $((limit - 30))
}

peers() {
  # Wheels in .whl/ (no network there): segment-anything and optuna's stack for the tests, the
  # peers (bitsandbytes, gemlite) for the quant benchmark; installed into $SITE, which goes on
  # PYTHONPATH for every later phase. A peer that fails to import is recorded as skipped.
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "no .whl/*.whl: packages that are not installed are skipped"
    return 0
  fi
  ls .whl/
  # All at once; if one wheel does not fit this machine, one by one so the others still land.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl && return 0
  local w
  for w in .whl/*.whl; do
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$w" ||
      echo "wheel $w: install failed (continuing without it)"
  done
  return 0
}

quant() {
  local limit=$1 mode=--quick
  [[ "$FULL" == 1 ]] && mode=""
  # New shapes stop 35 s before the timeout: one (M, K, N) group with JIT and peers can take 20 s.
  # GPU_CHECK_QUANT_PEERS: e.g. "int_mm,scaled_mm,int4pack,bnb" (gemlite's first-call
  # autotuning took the whole 55 s of the first H100 run's quant phase).
  "$PY" benchmarks/bench_quant.py $mode --write-dispatch --out "$OUT" \
    --peers "${GPU_CHECK_QUANT_PEERS-int_mm,scaled_mm,int4pack,bnb,gemlite}" \
    --summary-json "$TMP/quant_summary.json" --time-budget-s $((limit - 35 > limit / 2 ? limit - 35 : limit / 2))
}

models() {
  local limit=$1 mode=--quick att_limit=${GPU_CHECK_ATT_S:-25} t0
  [[ "$FULL" == 1 ]] && mode="" && att_limit=90
  ((att_limit > limit / 3)) && att_limit=$((limit / 3))
  t0=$(date +%s)
  # The attention op alone first (~25 s quick): its records go into models.jsonl (kind
  # "attention"), keeping $OUT at 8 files; new shapes stop 10 s before its own timeout.
  # shellcheck disable=SC2086  # GPU_CHECK_ATT_ARGS: extra flags, e.g. --sweep
  timeout -s INT -k 10 "$att_limit" "$PY" benchmarks/bench_attention.py $mode ${GPU_CHECK_ATT_ARGS:-} \
    --out "$OUT/models.jsonl" --summary-json "$TMP/attention_summary.json" \
    --time-budget-s $((att_limit - 10)) || echo "bench_attention rc=$?"
  local left=$((limit - ($(date +%s) - t0)))
  # No new timings 25 s before the timeout (one SAM config with its JIT can take ~10 s); the
  # plot goes to $TMP (redraw it from models.jsonl), keeping $OUT at 8 files.
  "$PY" benchmarks/bench_models.py $mode --out "$OUT" --plot-dir "$TMP" \
    --summary-json "$TMP/models_summary.json" --time-budget-s $((left > 50 ? left - 25 : 25))
}

latency() {
  # LatencyTable on DeiT-B: predicted vs measured latency of extracted subnets (kind
  # "latency_table" records in models.jsonl).
  "$PY" benchmarks/bench_latency_table.py --out "$OUT" --summary-json "$TMP/latency_summary.json"
}

mlp() {
  # The low-rank MLP block at one ViT-B image and a batch of 8 (dense, torch, ours in one
  # launch and in two), eager and graph-replayed on the harness; no new group 15 s before the
  # phase's timeout (its SIGINT also keeps what was measured).
  "$PY" benchmarks/bench_mlp_block.py --graph-calls "${GPU_CHECK_MLP_CALLS:-16}" \
    --out "$EXTRAS/mlp_block.jsonl" --time-budget-s $((${GPU_CHECK_MLP_S:-45} - 15))
}

dispatch() {
  # The tables rebuilt from this run's records (graph times where recorded), into a folder of
  # their own (the plans read them from there; the package's shipped tables stay as they are).
  local gpu cap
  gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  local args=()
  [[ -s "$OUT/lowrank.jsonl" ]] && args+=(--lowrank "$OUT/lowrank.jsonl")
  [[ -s "$OUT/quant.jsonl" ]] && args+=(--quant "$OUT/quant.jsonl")
  grep -q '"kind": "attention"' "$OUT/models.jsonl" 2>/dev/null && args+=(--attention "$OUT/models.jsonl")
  ((${#args[@]})) || { echo "no benchmark records to build tables from"; return 1; }
  mkdir -p "$EXTRAS/tables/dispatch"
  "$PY" benchmarks/dispatch_from_results.py --gpu "$gpu" --capability "$cap" \
    --config-dir "$EXTRAS/tables" "${args[@]}" \
    --note "rebuilt by gpu_check.sh from this run's records"
}

plans() {
  # What auto runs per layer of DeiT-B and SAM ViT-B (min config: the factorized layers; max:
  # dense) on this GPU, from the rebuilt tables; SAM first (its conversion is the shorter).
  # Each plan gets its own timeout so that one slow conversion does not starve the others.
  local gpu cap model cfg name
  gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  mkdir -p "$EXTRAS/plans"
  # Config-major, min first: the min configs hold the factorized layers, and the conversion
  # (float64 SVD on the CPU) took 79 s (SAM) and 233 s (DeiT-B) at min, 299 s and 761 s at max,
  # on 2 shared cores here; the phase's timeout may cut the max configs.
  for cfg in ${GPU_CHECK_PLAN_CONFIGS:-min max}; do
    for model in sam_vit_b deit_base_patch16_224; do
      name="${model}_${cfg}"
      SUPERNET_KERNELS_CONFIG_DIR="$EXTRAS/tables" timeout -s INT -k 5 "${GPU_CHECK_PLAN_S:-40}" \
        "$PY" -m supernet_kernels.cli plan \
        --model "$model" --config "$cfg" --gpu "$gpu" --capability "$cap" \
        --json "$EXTRAS/plans/$name.json" >"$EXTRAS/plans/$name.txt" 2>&1 ||
        echo "plan $name rc=$? (see plans/$name.txt)"
    done
  done
}

census() {
  # The census's predictions (the committed records of this commit's kernels: no compile
  # here) beside every call this run measured, and the ratio; > 2x off is a model error.
  local runs=()
  local f
  for f in "$OUT/lowrank.jsonl" "$OUT/quant.jsonl" "$OUT/models.jsonl" "$EXTRAS/mlp_block.jsonl"; do
    [[ -s "$f" ]] && runs+=("$f")
  done
  ((${#runs[@]})) || { echo "no benchmark records to compare with"; return 1; }
  "$PY" benchmarks/census.py --from-json benchmarks/results/census_sm90.json --no-fail \
    --measured "${runs[@]}" --out "$EXTRAS/census"
}

SITE="$TMP/site"
EXTRAS="$TMP/extras"
mkdir -p "$EXTRAS"
export PY OUT FULL TMP SITE EXTRAS
export -f versions build info tests bench peers quant models sanitize latency mlp dispatch plans \
  census

# GPU_CHECK_PHASES (comma list) runs a subset, e.g. a short second call after fixes:
#   GPU_CHECK_PHASES=peers,build,tests,sanitize GPU_CHECK_TESTS="tests/test_x.py" ...
WANT=",${GPU_CHECK_PHASES:-versions,peers,build,info,tests,bench,quant,models,mlp,dispatch,plans,census,latency,sanitize},"
want() { [[ "$WANT" == *",$1,"* ]]; }

# Nominal: versions 15, peers 20, build 75, info 15, tests 120, low-rank bench 55, quant bench 60,
# models 90 (attention op <= 25, then the whole-model bench), MLP block 45, dispatch tables 15,
# plans 50, census 15, latency 30, sanitizer 40 (s); the short phases take a few seconds, which
# is the slack. Reserves keep the later phases their share when an earlier one runs to its
# timeout (the reserve after each phase: the nominal times of the phases after it, less slack).
want versions && phase versions 15 460 versions
want peers && phase peers 20 440 peers
[[ -d "$SITE" ]] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
want build && phase build 75 380 build
want info && phase info 15 360 info
want tests && phase tests "${GPU_CHECK_TESTS_S:-120}" 240 tests
if want bench; then
  bench_limit=$(($(remaining) - 240))
  ((bench_limit > 55)) && bench_limit=55
  [[ "$FULL" == 1 ]] && bench_limit=$(($(remaining) - 240 > 300 ? 300 : $(remaining) - 240))
  ((bench_limit < 35)) && bench_limit=35
  phase bench "$bench_limit" 185 bench "$bench_limit"
fi
if want quant; then
  quant_limit=$(($(remaining) - 185))
  ((quant_limit > ${GPU_CHECK_QUANT_S:-60})) && [[ "$FULL" != 1 ]] && quant_limit=${GPU_CHECK_QUANT_S:-60}
  ((quant_limit < 35)) && quant_limit=35
  phase quant "$quant_limit" 185 quant "$quant_limit"
fi
if want models; then
  models_limit=$(($(remaining) - 150))
  ((models_limit > ${GPU_CHECK_MODELS_S:-90})) && [[ "$FULL" != 1 ]] && models_limit=${GPU_CHECK_MODELS_S:-90}
  ((models_limit > 400)) && models_limit=400
  ((models_limit < 40)) && models_limit=40
  phase models "$models_limit" 150 models "$models_limit"
fi
want mlp && phase mlp "${GPU_CHECK_MLP_S:-45}" 110 mlp
want dispatch && phase dispatch 15 100 dispatch
want plans && phase plans "${GPU_CHECK_PLANS_S:-50}" 75 plans
want census && phase census 15 65 census
want latency && phase latency "${GPU_CHECK_LATENCY_S:-30}" 40 latency
want sanitize && phase sanitize 40 0 sanitize

# The smaller outputs in one archive (the runner brings back 8 files): the benchmarks' table
# copy, the rebuilt tables, the MLP block records, the plans, the census comparison.
for f in "$OUT"/dispatch_*.json; do [[ -e "$f" ]] && mv "$f" "$EXTRAS/"; done
tar -czf "$OUT/extras.tar.gz" -C "$EXTRAS" . || echo "extras.tar.gz: tar rc=$?"

"$PY" - "$OUT" "$PHASES" "$TMP/bench_summary.json" "$FULL" "$TMP/quant_summary.json" \
  "$TMP/junit.xml" "$TMP/models_summary.json" "$TMP/attention_summary.json" \
  "$TMP/latency_summary.json" "$EXTRAS" <<'EOF'
import datetime, json, os, pathlib, re, subprocess, sys
import xml.etree.ElementTree as ET

(out, phases_path, bench_path, full, quant_path, junit_path, models_path, attn_path, lat_path,
 extras) = (pathlib.Path(sys.argv[1]), *sys.argv[2:])
extras = pathlib.Path(extras)
phases = {}
for line in pathlib.Path(phases_path).read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    phases[name] = {"rc": int(rc), "seconds": int(secs), "timeout": int(limit),
                    "timed_out": int(rc) in (124, 137)}

tests = {"passed": None, "failed": None, "errors": None, "skipped": None, "source": None}
junits = [p for p in (pathlib.Path(junit_path), pathlib.Path(junit_path).with_name("junit_slow.xml"))
          if p.exists()]
if junits:
    suites = []
    for junit in junits:
        root = ET.parse(junit).getroot()
        suites += [root] if root.tag == "testsuite" else list(root)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tests = {"passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
             "failed": tot["failures"], "errors": tot["errors"], "skipped": tot["skipped"],
             "source": " + ".join(p.name for p in junits)}
elif (out / "pytest.log").exists():
    text = (out / "pytest.log").read_text(errors="replace")
    for key, word in (("passed", "passed"), ("failed", "failed"), ("errors", "error"),
                      ("skipped", "skipped")):
        m = re.findall(rf"(\d+) {word}", text)
        tests[key] = int(m[-1]) if m else 0
    tests["source"] = "pytest.log"

bench = json.loads(pathlib.Path(bench_path).read_text()) if pathlib.Path(bench_path).exists() else {}
quant = json.loads(pathlib.Path(quant_path).read_text()) if pathlib.Path(quant_path).exists() else {}
models = json.loads(pathlib.Path(models_path).read_text()) if pathlib.Path(models_path).exists() else {}
attn = json.loads(pathlib.Path(attn_path).read_text()) if pathlib.Path(attn_path).exists() else {}
lat = json.loads(pathlib.Path(lat_path).read_text()) if pathlib.Path(lat_path).exists() else {}
lat = {k: v for k, v in lat.items() if k not in ("env", "targets")}  # the harness's provenance
# the MLP block: ours (one launch) against the dense block, graph-replayed, per (M, rank)
mlp = {}
mlp_path = extras / "mlp_block.jsonl"
if mlp_path.exists():
    rows = [json.loads(x) for x in mlp_path.read_text().splitlines() if x.strip()]
    dense = {(r["M"], r["rank"]): r.get("graph_us") for r in rows if r.get("variant") == "dense"}
    for r in rows:
        if r.get("variant") in ("ours", "ours_2launch") and r.get("graph_us") and dense.get((r["M"], r["rank"])):
            mlp[f"{r['variant']} M={r['M']} r={r['rank']}"] = {
                "graph_us": round(r["graph_us"], 2), "ok": r.get("correct", r.get("ok")),
                "speedup_vs_dense": round(dense[(r["M"], r["rank"])] / r["graph_us"], 2)}
# the census's predictions beside this run's measurements (records with a measured_us)
census = None
census_path = extras / "census" / "census_sm90.json"
if census_path.exists():
    recs = [r for r in json.loads(census_path.read_text())["records"] if r.get("measured_us")]
    census = {"compared": len(recs), "model_errors": sum(bool(r.get("model_error")) for r in recs),
              "worst": sorted(({"call": f"{r['op']}/{r['implementation']} {r['shape_label']}",
                                "ratio": r["ratio"]} for r in recs),
                              key=lambda d: -abs(__import__("math").log(d["ratio"])))[:10]}
plans = sorted(p.name for p in (extras / "plans").glob("*.json")) if (extras / "plans").exists() else []
env = bench.get("env") or quant.get("env") or {}
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
except Exception:
    gpu = env.get("gpu", "unknown")
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip()
except Exception:
    commit = ""
# The device runner copies the working tree without .git: the caller passes the commit.
commit = commit or os.environ.get("GPU_CHECK_COMMIT", "unknown")
summary = {
    "gpu": gpu, "commit": commit,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": env.get("torch"), "triton": env.get("triton"), "ceilings": env.get("ceilings"),
    "phases": phases, "tests": tests, "benchmark": "full" if full == "1" else "quick",
    "targets": bench.get("targets"), "bad_backend_results": bench.get("bad"),
    "groups_not_run": bench.get("groups_not_run"),
    "dispatch_table": bench.get("dispatch"),
    "quant_targets": quant.get("targets"), "quant_bad_backend_results": quant.get("bad"),
    "quant_groups_not_run": quant.get("groups_not_run"), "quant_dispatch": quant.get("dispatch"),
    "models_latency_ms": models.get("latency_ms"), "models_errors": models.get("errors"),
    "models_failed": models.get("models_failed"), "models_not_run": models.get("not_run"),
    "models_targets": models.get("targets"), "models_rel_err": models.get("rel_err"),
    "models_output_mismatch": models.get("output_mismatch"),
    "attention_targets": attn.get("targets"), "attention_bad": attn.get("bad"),
    "attention_pct_bf16_peak": attn.get("pct_bf16_peak"),
    "latency_table": lat or None,
    "mlp_block": mlp or None, "census_vs_measured": census, "plans_written": plans,
    "files": sorted(p.name for p in out.iterdir()),
}
(out / "gpu_check_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))

print("\n================ gpu_check summary ================")
print(f"gpu {gpu}   commit {commit[:12]}   {summary['date']}")
for name, p in phases.items():
    flag = "TIMEOUT" if p["timed_out"] else ("ok" if p["rc"] == 0 else f"rc={p['rc']}")
    print(f"  {name:<9} {flag:<8} {p['seconds']:>4}s / {p['timeout']}s")
print(f"  tests     passed {tests['passed']}  failed {tests['failed']}  errors {tests['errors']}"
      f"  skipped {tests['skipped']}  ({tests['source']})")
for t in (bench.get("targets") or {}).values():
    verdict = {True: "PASS", False: "MISS", None: "N/A"}[t["pass"]]
    print(f"  target    {verdict:<4} {t['target']} ({t['n_pass']}/{t['n']})")
print(f"  bad backend results: {len(bench.get('bad') or [])}   dispatch: {bench.get('dispatch')}")
for t in (quant.get("targets") or {}).values():
    verdict = {True: "PASS", False: "MISS", None: "N/A"}[t["pass"]]
    print(f"  quant     {verdict:<4} {t['target']} ({t['n_pass']}/{t['n']})")
print(f"  quant bad backend results: {len(quant.get('bad') or [])}   "
      f"groups not run: {quant.get('groups_not_run')}   dispatch: {quant.get('dispatch')}")
for k, v in (models.get("latency_ms") or {}).items():
    print(f"  models    {k:<28} {'-' if v is None else f'{v:.2f} ms'}")
print(f"  models errors: {len(models.get('errors') or [])}   failed: {models.get('models_failed')}"
      f"   not run: {models.get('models_not_run', models.get('not_run'))}"
      f"   output mismatches: {models.get('output_mismatch')}")
for t in [*(models.get("targets") or {}).values(), *(attn.get("targets") or {}).values()]:
    verdict = {True: "PASS", False: "MISS", None: "N/A"}[t["pass"]]
    v = t.get("value", t.get("worst"))
    print(f"  models    {verdict:<4} {t['target']}: {'-' if v is None else v}")
print(f"  attention bad rows: {len(attn.get('bad') or [])}")
print(f"  latency table: {lat or '-'}")
for k, v in mlp.items():
    print(f"  mlp block {k:<26} {v['graph_us']} us graph, {v['speedup_vs_dense']}x dense")
if census:
    print(f"  census    {census['compared']} calls compared, {census['model_errors']} off by > 2x;"
          f" worst {census['worst'][:3]}")
print(f"  plans     {', '.join(plans) or '-'}")
print(f"  files in {out}: {', '.join(summary['files'])}")
EOF
