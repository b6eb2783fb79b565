#!/usr/bin/env bash
# One-command GPU check (make gpu-check): environment, step benchmark, end-to-end fits, the objectives side by side,
# streaming latency, the GPU tests, summary (the measurements first: they are what a short lease must not lose).
#   bash bench/gpu_check.sh            # on a CUDA machine (about 8 minutes on one H100/H200 with 16 cores)
#   bash bench/gpu_check.sh --dry-run  # the same code paths at the tiny preset on any machine (CI)
# Files go to $OUT (default logs/gpu_check): env.json step.json e2e.json objectives.json stream.json pytest.txt
# profile.txt, and <gpu>-<yyyymmdd>.{json,md} (also written to bench/results/ on a real run). A part that fails or
# runs past its time limit is reported and the next part still runs; the exit code is non-zero if any part failed.
# GPU_CHECK_PARTS="objectives stream summary" runs only those parts (summary reads whatever parts are in $OUT).
# GPU hosts without our dependencies: `../shared/tools/gpu-host-wheels` fills .whl/, installed here offline.
set -u
cd "$(dirname "$0")/.."
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
PY=${PY:-python3}
OUT=${OUT:-logs/gpu_check}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 WANDB_MODE=offline
if [ -d .whl ] && ! $PY -c "import hydra, omegaconf, av, decord, lightning, timm" 2>/dev/null; then
  echo "== installing .whl/ (offline)"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
failed=()
part() {  # part NAME SECONDS CMD...: run one part under a time limit, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "== [$(date +%T)] $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== [$(date +%T)] $name: exit $rc in $((SECONDS - t0))s"
  [ $rc -eq 0 ] || failed+=("$name($rc)")
}
PARTS=${GPU_CHECK_PARTS:-env step e2e objectives stream tests summary}  # a rerun can name the parts it needs
want() { [[ " $PARTS " == *" $1 "* ]]; }
want env && part env 60 $PY bench/gpu_check.py env $DRY
want step && part step "${GPU_CHECK_STEP_S:-150}" $PY bench/gpu_check.py step $DRY
want e2e && part e2e "${GPU_CHECK_E2E_S:-200}" $PY bench/gpu_check.py e2e $DRY
want objectives && part objectives "${GPU_CHECK_OBJECTIVES_S:-120}" $PY bench/objective_fit.py $DRY
want stream && part stream "${GPU_CHECK_STREAM_S:-60}" $PY bench/stream_latency.py $DRY
want tests && part tests "${GPU_CHECK_TEST_S:-200}" bash -c "set -o pipefail; $PY -m pytest -m gpu tests/test_gpu.py tests/test_host_sync.py tests/test_torchcodec.py -q -p no:cacheprovider -o addopts='' -rA 2>&1 | tee '$OUT/pytest.txt'"
want summary && part summary 60 $PY bench/gpu_check.py summary $DRY
if [ ${#failed[@]} -gt 0 ]; then echo "gpu-check: FAILED parts: ${failed[*]}"; exit 1; fi
echo "gpu-check: all parts passed"
