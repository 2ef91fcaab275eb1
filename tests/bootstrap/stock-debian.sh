#!/usr/bin/env bash
# Checks the README's test command on a stock Debian 12 — a minimal bookworm made with
# debootstrap, with nothing added but what a Rust user has (the Rust toolchain of this
# machine, mounted in, and gcc to link with) — so that it keeps working beyond the machines
# it is usually run on. Not part of scripts/test: it needs root, mount and chroot, and a
# Debian mirror.
#
# Usage: tests/bootstrap/stock-debian.sh [--full]
#   default  scripts/test --tools-only in the fresh system: every tool installs and runs
#   --full   all of scripts/test there (a complete build: ~15 minutes on 2 cores)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
mode="--tools-only"
[ "${1:-}" = "--full" ] && mode=""
[ "$(id -u)" -eq 0 ] || { echo "needs root (debootstrap, mount, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
[ -d "$rustup_home" ] && [ -x "$cargo_home/bin/cargo" ] || {
  echo "needs a rustup-installed Rust toolchain ($rustup_home, $cargo_home)" >&2; exit 1
}

work="$(mktemp -d)"
root="$work/root"
mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounted+=("$2"); }

echo "==> debootstrap: a minimal Debian 12 (bookworm) in $root"
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log"
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# What "Debian with Rust" has: rustup's toolchain, a linker, git, CA certificates.
chroot "$root" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev git ca-certificates >/dev/null'
bind "$rustup_home" "$root/root/.rustup"
bind "$cargo_home" "$root/root/.cargo"
git clone -q "$repo" "$root/src"
# The test vectors live beside the project in CI; a user's clone has none (the tests that
# read them say so and skip).
[ -d "$repo/../shared" ] && bind "$repo/../shared" "$root/shared"

# A machine behind a TLS-inspecting proxy trusts the proxy's CA through its bundle and these
# variables: carry them in, or nothing could be downloaded (a stock machine needs none).
carry=()
for v in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE GIT_SSL_CAINFO CARGO_HTTP_CAINFO; do
  f="${!v:-}"
  if [ -n "$f" ] && [ -f "$f" ]; then
    mkdir -p "$root$(dirname "$f")" && cp "$f" "$root$f"
    carry+=("$v=$f")
  fi
done

echo "==> before: what the fresh system lacks"
chroot "$root" bash -c 'for t in redis-server python3 node npm kubectl grpcurl; do printf "  %-13s %s\n" "$t" "$(command -v "$t" || echo missing)"; done'

echo "==> scripts/test $mode, in the fresh system"
start=$(date +%s)
chroot "$root" env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 CI="${CI:-}" "${carry[@]}" bash -c "cd /src && ./scripts/test $mode"
echo "==> stock Debian 12: scripts/test $mode passed in $(( $(date +%s) - start )) s"
