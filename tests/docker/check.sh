#!/usr/bin/env bash
# Builds what the Dockerfile's build stage builds, without Docker (CI has no Docker engine):
# exactly the files its COPY lines name are staged in an empty directory, and its RUN lines
# run there, in order. Two things differ, on purpose: the build is `--offline` (everything it
# needs must come from Cargo.lock, and CI has just fetched it) and in the dev profile of the
# shared target directory (which files a build needs does not depend on the profile, and the
# dependencies are built already). A Dockerfile that forgets a file the manifest names fails
# here, as the image build would.
#
# Usage: tests/docker/check.sh [Dockerfile]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dockerfile="${1:-$root/Dockerfile}"
target="${CARGO_TARGET_DIR:-$root/target}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# The build stage's instructions, continuation lines joined, up to the next FROM.
mapfile -t steps < <(awk '
  /^[[:space:]]*#/ { next }
  { line = line $0 }
  /\\$/ { sub(/\\$/, "", line); next }
  { if (line ~ /[^[:space:]]/) print line; line = "" }
' "$dockerfile" | awk 'BEGIN { n = 0 } /^FROM / { n++; next } n == 1')

workdir="$stage"
ran=0
for step in "${steps[@]}"; do
  read -r op rest <<<"$step"
  case "$op" in
    WORKDIR) workdir="$stage$rest"; mkdir -p "$workdir" ;;
    COPY)
      read -r -a args <<<"$rest"
      dest="${args[-1]}"; unset 'args[-1]'
      for src in "${args[@]}"; do
        case "$src" in --*) echo "check.sh: COPY option $src is not supported" >&2; exit 1 ;; esac
        # As Docker does: a directory's contents go into dest; a file goes into dest/ when
        # dest is a directory (a trailing slash, or several sources), else becomes dest.
        if [ -d "$root/$src" ]; then
          mkdir -p "$workdir/$dest" && cp -R "$root/$src/." "$workdir/$dest/"
        elif [[ "$dest" == */ || ${#args[@]} -gt 1 ]]; then
          mkdir -p "$workdir/$dest" && cp "$root/$src" "$workdir/$dest/"
        else
          mkdir -p "$(dirname "$workdir/$dest")" && cp "$root/$src" "$workdir/$dest"
        fi
      done ;;
    RUN)
      cmd="${rest//--release/--offline}"
      cmd="${cmd//target\/release\//$target/debug/}"
      echo "+ $cmd"
      (cd "$workdir" && CARGO_TARGET_DIR="$target" bash -euo pipefail -c "$cmd")
      ran=$((ran + 1)) ;;
    ENV|ARG|LABEL|USER|EXPOSE|ENTRYPOINT|CMD) ;;
    *) echo "check.sh: unexpected instruction in the build stage: $op" >&2; exit 1 ;;
  esac
done
[ "$ran" -gt 0 ] || { echo "check.sh: no RUN step found in $dockerfile" >&2; exit 1; }
echo "Dockerfile build stage: OK ($ran RUN steps, staged from its COPY lines only)"
