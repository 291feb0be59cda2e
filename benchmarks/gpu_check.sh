#!/usr/bin/env bash
# One-command GPU check: versions, build, `info`, the whole test suite on the GPU, the low-rank
# benchmark (+ dispatch table), and one summary JSON. Everything lands in ${OUT} as at most
# 7 files, flat (the device runner brings back at most 8 files, 2 folders deep):
#   console.log build.log pytest.log junit.xml lowrank.jsonl dispatch_<gpu>.json
#   gpu_check_summary.json
#
#   bash benchmarks/gpu_check.sh            # quick benchmark
#   GPU_CHECK_FULL=1 bash benchmarks/gpu_check.sh   # or --full: full benchmark sweep
#   GPU_CHECK_SKIP_BUILD=1 ...                       # reuse an installed build
#
# The whole script is sized to end within GPU_CHECK_BUDGET_S (default 470 s): each phase gets
# its own `timeout`, clipped so that the phases after it keep a minimum share.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/results/gpu_run}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
FULL="${GPU_CHECK_FULL:-0}"
[[ "${1:-}" == "--full" ]] && FULL=1
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
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
EOF
  (nvcc --version || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version) 2>/dev/null | tail -2 || true
  git rev-parse HEAD 2>/dev/null || echo "commit unknown"
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
  # The suite runs on the GPU for real: no interpreter. No -x: we want every failure.
  env -u TRITON_INTERPRET "$PY" -m pytest -q tests -p no:cacheprovider \
    --junitxml="$OUT/junit.xml" >"$OUT/pytest.log" 2>&1
  local rc=$?
  tail -15 "$OUT/pytest.log"
  return $rc
}

bench() {
  local limit=$1 mode=--quick
  [[ "$FULL" == 1 ]] && mode=""
  # Stop starting new shapes 30 s before the phase timeout, so results are always written.
  "$PY" benchmarks/bench_lowrank.py $mode --write-dispatch --out "$OUT" \
    --summary-json "$TMP/bench_summary.json" --time-budget-s $((limit - 30))
}

export PY OUT FULL TMP
export -f versions build info tests bench

# Reserves keep ~120 s for the benchmark even when every earlier phase runs to its timeout.
phase versions 30 420 versions
phase build 180 250 build
phase info 30 230 info
phase tests 150 130 tests
bench_limit=$(($(remaining) - 10))
((bench_limit > 300)) && bench_limit=300
phase bench "$bench_limit" 10 bench "$bench_limit"

"$PY" - "$OUT" "$PHASES" "$TMP/bench_summary.json" "$FULL" <<'EOF'
import datetime, json, pathlib, re, subprocess, sys
import xml.etree.ElementTree as ET

out, phases_path, bench_path, full = pathlib.Path(sys.argv[1]), *sys.argv[2:]
phases = {}
for line in pathlib.Path(phases_path).read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    phases[name] = {"rc": int(rc), "seconds": int(secs), "timeout": int(limit),
                    "timed_out": int(rc) in (124, 137)}

tests = {"passed": None, "failed": None, "errors": None, "skipped": None, "source": None}
junit = out / "junit.xml"
if junit.exists():
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tests = {"passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
             "failed": tot["failures"], "errors": tot["errors"], "skipped": tot["skipped"],
             "source": "junit.xml"}
elif (out / "pytest.log").exists():
    text = (out / "pytest.log").read_text(errors="replace")
    for key, word in (("passed", "passed"), ("failed", "failed"), ("errors", "error"),
                      ("skipped", "skipped")):
        m = re.findall(rf"(\d+) {word}", text)
        tests[key] = int(m[-1]) if m else 0
    tests["source"] = "pytest.log"

bench = json.loads(pathlib.Path(bench_path).read_text()) if pathlib.Path(bench_path).exists() else {}
env = bench.get("env", {})
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
except Exception:
    gpu = env.get("gpu", "unknown")
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip() or "unknown"
except Exception:
    commit = "unknown"
summary = {
    "gpu": gpu, "commit": commit,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": env.get("torch"), "triton": env.get("triton"), "ceilings": env.get("ceilings"),
    "phases": phases, "tests": tests, "benchmark": "full" if full == "1" else "quick",
    "targets": bench.get("targets"), "bad_backend_results": bench.get("bad"),
    "groups_not_run": bench.get("groups_not_run"),
    "dispatch_table": bench.get("dispatch"), "files": sorted(p.name for p in out.iterdir()),
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
print(f"  files in {out}: {', '.join(summary['files'])}")
EOF
