#!/usr/bin/env bash
# `make demo`: a dataset tracking the demo project of the bundled XNAT emulator.
#   1. start the emulator (closed site, demo preset) on a free loopback port;
#   2. datalad create + xnat-init + xnat-update --reckless fast (register, download nothing);
#   3. datalad get one subject through the xnat special remote, verified;
#   4. show the tree and the verified content; stop the emulator.
# The dataset is left in ./demo-dataset to explore. Credentials come from the environment, as a
# user would set them for a scripted run; nothing is written to your keyring.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-$PWD/demo-dataset}
PY=${PY:-.venv/bin/python}

: "${GIT_AUTHOR_NAME:=$(git config user.name || echo 'XNAT Demo')}"
: "${GIT_AUTHOR_EMAIL:=$(git config user.email || echo 'demo@example.org')}"
export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

urlfile=$(mktemp)
"$PY" -m xnat_emulator --demo --require-login --port 0 >"$urlfile" &
emulator_pid=$!
trap 'kill $emulator_pid 2>/dev/null || true; rm -f "$urlfile"' EXIT
for _ in $(seq 100); do
    [ -s "$urlfile" ] && break
    kill -0 $emulator_pid 2>/dev/null || { echo "the emulator did not start" >&2; exit 1; }
    sleep 0.1
done
URL=$(head -n1 "$urlfile")
step "XNAT emulator serving the DEMO project at $URL"

export DATALAD_CREDENTIAL_DEMO_USER=alice DATALAD_CREDENTIAL_DEMO_PASSWORD=alice-pass

rm -rf "$DEMO_DIR"
step "datalad create $DEMO_DIR"
datalad create "$DEMO_DIR"
cd "$DEMO_DIR"

step "datalad xnat-init $URL -p DEMO --credential demo"
datalad xnat-init "$URL" -p DEMO --credential demo
cat .datalad/config

step "datalad xnat-update --reckless fast   (registers every file, downloads nothing)"
time datalad xnat-update --reckless fast

# awk reads its whole input (unlike head), so no SIGPIPE trips pipefail
first() { awk -v n="${1:-1}" 'NR <= n'; }
first_subject=$(find . -mindepth 1 -maxdepth 1 -type d ! -name '.*' | sort | first)
step "datalad get $first_subject"
datalad get -J4 "$first_subject"

step "the dataset"
echo "folders (subject/session/scan):"
find . -mindepth 1 -maxdepth 3 -type d ! -path './.*' | sort | first 25
echo "$(git annex find --include='*' | wc -l) files tracked, $(git annex find --in here | wc -l) with content here; for example:"
find "$first_subject" -type l | sort | first 5
step "git annex whereis (one file) and fsck of what was fetched"
one=$(git annex find --in here | first)
git annex whereis "$one"
git annex fsck --fast -q "$first_subject" && echo "fsck: all fetched content verified"
git annex info --fast . | grep -E 'annexed files|size of annexed files|local annex'
step "demo finished: the dataset is in $DEMO_DIR"
