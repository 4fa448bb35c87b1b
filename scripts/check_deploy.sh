#!/usr/bin/env bash
# Check the deployment files for real:
#   1. the Kubernetes manifests in deploy/k8s/ validate offline, strictly (kubernetes-validate, bundled schemas);
#   2. where a container engine works (podman, else docker), build the image from ./Dockerfile, bake a chat model into
#      an image of its own, run it with its port published on 127.0.0.1, call /health, /v1/models, one chat completion,
#      the page and /metrics, run the image's HEALTHCHECK, and stop and remove the container.
# On a machine that reaches no image registry, the base image is made locally with debootstrap (a minimal Debian with
# python3 and python3-venv, imported as localhost/debian-py:bookworm; needs root). It says what it did and what it skipped,
# and exits non-zero on any failure.
#
# usage: scripts/check_deploy.sh [--checkpoint DIR] [--no-image] [--reuse-image] [--rmi]
#   --checkpoint DIR   the chat model to put in the image (a run or checkpoint directory); default: a tiny one built here
#   --no-image         validate the manifests only
#   --reuse-image      run the chatgpt-course:check image an earlier run built, if there is one, instead of building it again
#   --rmi              remove the images it built at the end (kept by default: a second run reuses their layers)
# environment: ENGINE=podman|docker|none, BASE=IMAGE (skip the registry and debootstrap), TORCH_WHEEL=FILE (a CPU torch
# wheel, used when download.pytorch.org is unreachable; default: the newest fitting one in TORCH_WHEEL_DIR=/opt/wheels)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHECKPOINT="" IMAGE_STEP=1 RMI=0 REUSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) CHECKPOINT=${2:?--checkpoint needs a directory}; shift 2 ;;
    --no-image) IMAGE_STEP=0; shift ;;
    --rmi) RMI=1; shift ;;
    --reuse-image) REUSE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_deploy.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$CHECKPOINT" ] && [ ! -d "$CHECKPOINT" ]; then
  echo "check_deploy.sh: error: --checkpoint '$CHECKPOINT' is not a directory" >&2; exit 2
fi

source scripts/setup.sh            # .venv with the course, kubernetes-validate and the openai client
PY=.venv/bin/python
DONE=() SKIPPED=()
say() { printf '== %s\n' "$*"; }
done_() { DONE+=("$*"); printf '   ok: %s\n' "$*"; }
skip() { SKIPPED+=("$*"); printf '   SKIPPED: %s\n' "$*"; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_deploy.XXXXXX")
ENGINE_CMD="" NAME="" BUILT=()
cleanup() {
  local rc=$?
  if [ -n "$NAME" ]; then
    if [ $rc -ne 0 ]; then echo "-- the container's last log lines:"; $ENGINE_CMD logs --tail 30 "$NAME" 2>&1 | sed 's/^/   | /' || true; fi
    $ENGINE_CMD stop -t 10 "$NAME" >/dev/null 2>&1 || true
    $ENGINE_CMD rm -f -v "$NAME" >/dev/null 2>&1 && echo "   container $NAME stopped and removed (with its /data volume)"
  fi
  if [ "$RMI" = 1 ] && [ ${#BUILT[@]} -gt 0 ]; then $ENGINE_CMD rmi -f "${BUILT[@]}" >/dev/null 2>&1 && echo "   removed images: ${BUILT[*]}"; fi
  rm -rf "$WORK"
  echo
  for d in "${DONE[@]}"; do echo "done:    $d"; done
  for s in "${SKIPPED[@]}"; do echo "skipped: $s"; done
  if [ $rc -eq 0 ]; then echo "check_deploy: PASSED"; else echo "check_deploy: FAILED (exit $rc)"; fi
  exit $rc
}
trap cleanup EXIT
fail() { echo "   FAILED: $*" >&2; exit 1; }

# ---- 1. the manifests, offline and strict, against an older and the newest Kubernetes the package knows
say "validating deploy/k8s/*.yaml (kubernetes-validate $($PY -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'), strict, offline)"
for v in 1.30.0 ""; do
  kubernetes-validate --strict ${v:+-k $v} deploy/k8s/*.yaml | sed 's/^/   /' || fail "the manifests do not validate${v:+ against Kubernetes $v}"
done
done_ "manifests validate strictly: $(ls deploy/k8s/*.yaml | xargs -n1 basename | tr '\n' ' ')(Kubernetes 1.30 and newest)"
[ "$IMAGE_STEP" = 1 ] || { skip "image build and run (--no-image)"; exit 0; }

# ---- 2. a container engine
say "looking for a container engine"
WANT=${ENGINE:-auto} ENGINE=""
if [ "$WANT" = auto ] || [ "$WANT" = podman ]; then
  if command -v podman >/dev/null && [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null; then
    # machines like the one this was written on need the runc runtime and lower ulimits (../shared/notes/containers.md)
    printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' > "$WORK/containers.conf"
    export CONTAINERS_CONF="$WORK/containers.conf"
    echo "   podman: runtime runc, ulimits nofile=1024 nproc=4096 (CONTAINERS_CONF=$CONTAINERS_CONF)"
  fi
  if command -v podman >/dev/null && podman info >/dev/null 2>&1; then ENGINE=podman; fi
fi
if [ -z "$ENGINE" ] && { [ "$WANT" = auto ] || [ "$WANT" = docker ]; }; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; fi
fi
if [ -z "$ENGINE" ]; then
  case "$WANT" in
    podman|docker) fail "ENGINE=$WANT, but $WANT does not work here ($WANT info fails)" ;;
    none) skip "image build and run (ENGINE=none)" ;;
    *) skip "image build and run: no working container engine (podman, or docker with its daemon)" ;;
  esac
  exit 0
fi
ENGINE_CMD=$ENGINE
echo "   using $ENGINE ($($ENGINE --version))"
FORMAT=(); [ "$ENGINE" = podman ] && FORMAT=(--format docker)   # OCI images drop HEALTHCHECK; docker's format keeps it

# ---- 3. the base image: the Dockerfile's default if it can be had, else a local Debian made with debootstrap
say "the base image"
if [ -n "${BASE:-}" ]; then
  echo "   BASE=$BASE (from the environment)"
elif $ENGINE image inspect docker.io/library/python:3.12-slim >/dev/null 2>&1 \
     || timeout 120 $ENGINE pull -q docker.io/library/python:3.12-slim >/dev/null 2>"$WORK/pull.err"; then
  BASE=docker.io/library/python:3.12-slim; echo "   $BASE (the Dockerfile's default)"
else
  echo "   no registry: $(tail -1 "$WORK/pull.err" 2>/dev/null | cut -c1-220)"
  BASE=localhost/debian-py:bookworm
  if $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
    echo "   $BASE is already here (made by an earlier run)"
  else
    command -v debootstrap >/dev/null || fail "no registry and no debootstrap to make a base image (apt-get install debootstrap), or set BASE"
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root to make the base image; or set BASE to a local image with python3"
    MIRROR=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    MIRROR=${MIRROR:-$(awk '$1 == "deb" && $2 ~ /debian$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    echo "   making $BASE: debootstrap --variant=minbase --include=python3,python3-venv bookworm from $MIRROR"
    nice -n 19 debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
      || { tail -5 "$WORK/debootstrap.log"; fail "debootstrap"; }
    tar -C "$WORK/rootfs" -c . | $ENGINE import - "$BASE" >/dev/null 2>"$WORK/import.err" \
      || { cat "$WORK/import.err"; fail "importing the root file system as $BASE"; }
    rm -rf "$WORK/rootfs"
  fi
  done_ "base image $BASE (a local Debian bookworm with python3: no image registry reachable)"
fi
PYTAG=$($ENGINE run --rm "$BASE" python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])') || fail "the base image $BASE has no python3"
echo "   python in the base image: $PYTAG"

if [ "$REUSE" = 1 ] && $ENGINE image inspect chatgpt-course:check >/dev/null 2>&1; then
  say "reusing chatgpt-course:check (--reuse-image), built $($ENGINE image inspect --format '{{.Created}}' chatgpt-course:check | cut -c1-19)"
  skip "building the image (--reuse-image: the one an earlier run built from ./Dockerfile)"
else
# ---- 4. torch for CPU: PyTorch's CPU index (the Dockerfile's default), else a local CPU wheel mounted into the build
say "where the image gets torch (CPU)"
BUILD=(--build-arg "BASE=$BASE")
if [ "$ENGINE" = podman ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  # pip must trust what this host trusts (a proxy's certificate, say): mounted at its own path, never over the image's
  BUILD+=(-v /etc/ssl/certs/ca-certificates.crt:/run/hostca.crt:ro --build-arg PIP_CERT=/run/hostca.crt)
  echo "   pip in the build trusts the host's CA bundle (PIP_CERT=/run/hostca.crt)"
fi
if $PY -c 'import urllib.request as u; u.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=10)' 2>/dev/null; then
  echo "   https://download.pytorch.org/whl/cpu is reachable: the Dockerfile's default"
else
  WHEEL=${TORCH_WHEEL:-}
  [ -n "$WHEEL" ] || WHEEL=$($PY - "${TORCH_WHEEL_DIR:-/opt/wheels}" "$PYTAG" "$(uname -m)" <<'EOF'
import sys
from pathlib import Path
from packaging.version import Version
folder, tag, arch = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
fits = [(Version(p.name.split("-")[1]), p) for p in folder.glob(f"torch-*+cpu-{tag}-{tag}-*linux*_{arch}.whl")]
fits = [(v, p) for v, p in fits if Version("2.4") <= Version(v.public) <= Version("2.13.0")]  # the course's torch range
print(max(fits)[1] if fits else "")
EOF
)
  if [ -z "$WHEEL" ]; then
    skip "image build and run: download.pytorch.org is unreachable and no CPU torch wheel for $PYTAG in ${TORCH_WHEEL_DIR:-/opt/wheels} (set TORCH_WHEEL); PyPI's torch is the CUDA build"
    exit 0
  fi
  [ "$ENGINE" = podman ] || { skip "image build and run: a local torch wheel needs podman build -v (docker build cannot mount it)"; exit 0; }
  echo "   download.pytorch.org is unreachable: the local CPU wheel $WHEEL (dependencies from PyPI)"
  BUILD+=(-v "$(dirname "$WHEEL"):/run/wheels:ro" --build-arg "TORCH=/run/wheels/$(basename "$WHEEL")" --build-arg TORCH_INDEX=https://pypi.org/simple)
fi

# ---- 5. build the image (heavy: at low priority)
say "building chatgpt-course:check from ./Dockerfile (log: $WORK/build.log)"
T0=$SECONDS
nice -n 19 $ENGINE build "${FORMAT[@]}" -t chatgpt-course:check "${BUILD[@]}" -f Dockerfile . > "$WORK/build.log" 2>&1 \
  || { tail -25 "$WORK/build.log" | sed 's/^/   | /'; fail "building the image"; }
BUILT+=(chatgpt-course:check)
echo "   $(grep -m1 '^torch ' "$WORK/build.log" || echo 'torch: see the build log')"
done_ "image chatgpt-course:check built in $((SECONDS - T0)) s ($($ENGINE image inspect --format '{{.Size}}' chatgpt-course:check | awk '{printf "%.0f MB", $1/1e6}'), FROM $BASE)"
fi  # (steps 4 and 5: skipped with --reuse-image)

# ---- 6. a chat model baked into an image of its own (the same layout as the Kubernetes volume: chat/versions/v0001/)
say "a chat model for the image"
if [ -z "$CHECKPOINT" ]; then
  echo "   building a tiny chat model with the command line (seconds)"
  export OMP_NUM_THREADS=1
  T=$WORK/tiny
  nice -n 19 chatgpt-course data chat --n 32 --seed 0 --out "$T/chat.jsonl" > "$WORK/tiny.log" 2>&1 \
  && nice -n 19 chatgpt-course pretrain --preset cpu-tiny --tokenizer bpe:300 --vocab-size 320 --n-layer 1 --n-embd 32 --n-head 2 \
       --block-size 128 --seq-len 64 --batch-size 4 --max-steps 2 --warmup-steps 1 --eval-tokens 256 --sample-tokens 0 --threads 1 \
       --no-progress --out "$T/base" >> "$WORK/tiny.log" 2>&1 \
  && nice -n 19 chatgpt-course sft --base "$T/base" --data "$T/chat.jsonl" --out "$T/sft" --seq-len 128 --batch-size 4 --max-steps 2 \
       --eval-tokens 0 --threads 1 --no-progress >> "$WORK/tiny.log" 2>&1 \
  || { tail -5 "$WORK/tiny.log"; fail "building the tiny chat model"; }
  CHECKPOINT=$T/sft
fi
mkdir -p "$WORK/model/chat/versions"
cp -rL "$CHECKPOINT" "$WORK/model/chat/versions/v0001" && chmod -R a+rX "$WORK/model"
printf 'FROM chatgpt-course:check\nCOPY chat /models/chat\n' > "$WORK/model/Containerfile"
$ENGINE rmi -f chatgpt-course:check-model >/dev/null 2>&1 || true   # an earlier run's: no dangling copies pile up
$ENGINE build "${FORMAT[@]}" -t chatgpt-course:check-model -f "$WORK/model/Containerfile" "$WORK/model" > "$WORK/model-build.log" 2>&1 \
  || { tail -10 "$WORK/model-build.log"; fail "baking the model into an image"; }
BUILT+=(chatgpt-course:check-model)
done_ "model $CHECKPOINT ($(du -sh "$CHECKPOINT" | cut -f1)) baked in as /models/chat/versions/v0001 (image chatgpt-course:check-model)"

# ---- 7. run it, published on the loopback address only, and talk to it
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
NAME=chatgpt-course-check-$$
# as the Deployment runs it: a read-only root file system with /tmp and /data writable (/data: a fresh anonymous volume,
# like the emptyDir; podman 4.3 leaves a --tmpfs other than /tmp root's 755), no capabilities, no new privileges
RUN=(-d --name "$NAME" -p "127.0.0.1:$PORT:8000" --read-only --tmpfs /tmp:rw,mode=1777 -v /data
     --cap-drop ALL --security-opt no-new-privileges)
say "running $NAME: $ENGINE run ${RUN[*]:3} chatgpt-course:check-model"
# (podman without systemd says it cannot schedule the HEALTHCHECK: kept in run.err, shown only on failure)
$ENGINE run "${RUN[@]}" chatgpt-course:check-model >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting the container"; }
echo "   command: $($ENGINE inspect --format '{{join .Config.Cmd " "}}' "$NAME"), user $($ENGINE exec "$NAME" id -u):$($ENGINE exec "$NAME" id -g)"
[ "$($ENGINE exec "$NAME" id -u)" != 0 ] || fail "the server runs as root"
set +e  # exit status 3: all answered but the page
$PY - "http://127.0.0.1:$PORT" "$ENGINE" "$NAME" <<'EOF'
import json, subprocess, sys, time, urllib.error, urllib.request
base, engine, name = sys.argv[1:]
def get(path, timeout=10):
    with urllib.request.urlopen(base + path, timeout=timeout) as r: return r.status, r.headers.get("content-type", ""), r.read().decode()
t0, last = time.monotonic(), None
while True:  # /health answers 200 once the model is loaded
    try:
        status, _, body = get("/health", timeout=3)
        if status == 200: break
    except urllib.error.HTTPError as e: status, body = e.code, e.read().decode()
    except OSError as e: status, body = None, str(e)
    if subprocess.run([engine, "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True).stdout.strip() != "true":
        sys.exit("   the container stopped before /health answered 200")
    if time.monotonic() - t0 > 180: sys.exit(f"   /health did not answer 200 within 180 s (last: {status} {body[:200]})")
    if status != last: print(f"   /health: {status or 'no answer yet'}"); last = status
    time.sleep(1)
print(f"   GET /health -> 200 {body.strip()[:200]} ({time.monotonic() - t0:.1f} s after start)")
status, _, body = get("/v1/models")
models = json.loads(body)["data"]
print(f"   GET /v1/models -> {status} " + ", ".join(f"{m['id']} (version {m.get('version')})" for m in models))
from openai import OpenAI
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
r = client.chat.completions.create(model=models[0]["id"], messages=[{"role": "user", "content": "What is 23 plus 19?"}],
                                   max_tokens=12, temperature=0)
c = r.choices[0]
assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 1, r.usage
print(f"   POST /v1/chat/completions -> {c.message.content!r} (finish_reason {c.finish_reason}, "
      f"{r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens)")
status, _, body = get("/metrics")
names = sorted({l.split()[2] for l in body.splitlines() if l.startswith("# TYPE ") and not l.split()[2].endswith("_created")})
assert status == 200 and names, "no metrics"
print(f"   GET /metrics -> {status}, {len(names)} metrics: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
fb = {"kind": "rating", "prompt": "What is 23 plus 19?", "reply": c.message.content, "rating": 1, "model": models[0]["id"]}
req = urllib.request.Request(base + "/v1/feedback", json.dumps(fb).encode(), {"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r: status, body = r.status, json.loads(r.read())
except urllib.error.HTTPError as e: sys.exit(f"   POST /v1/feedback -> {e.code} {e.read()[:200]!r}")
assert status == 200 and body.get("ok") is True, (status, body)
print(f"   POST /v1/feedback -> {status} {body} (feedback.sqlite in /data)")
try: status, ctype, body = get("/")
except urllib.error.HTTPError as e: status, ctype, body = e.code, "", ""
if status != 200 or "<html" not in body.lower():  # the last check: exit status 3 lets the script run the HEALTHCHECK first
    print(f"   GET / -> {status} {ctype}: {body[:120]!r}: the chat page is not in the image "
          "(chatgpt_course/static/chat.html must be package data in setup.py)"); sys.exit(3)
print(f"   GET / -> {status} {ctype}, {len(body)} characters of HTML (the chat page)")
EOF
PAGE_RC=$?
set -e
[ $PAGE_RC = 0 ] || [ $PAGE_RC = 3 ] || fail "talking to the server in the container"
done_ "the container answered /health, /v1/models, one chat completion, /metrics and /v1/feedback on 127.0.0.1:$PORT"
if [ "$ENGINE" = podman ]; then
  podman healthcheck run "$NAME" >/dev/null || fail "the image's HEALTHCHECK reports unhealthy"
  done_ "the image's HEALTHCHECK (python3 -> /health) reports healthy (podman healthcheck run)"
else
  skip "running the HEALTHCHECK by hand (docker runs it on its own schedule: docker inspect --format '{{.State.Health.Status}}')"
fi
[ $PAGE_RC = 0 ] || fail "the chat page: GET / did not serve chatgpt_course/static/chat.html (not installed in the image)"
done_ "GET / serves the chat page"
