#!/usr/bin/env bash
# Installs what building and testing skprof needs, from Debian's packages.
# Idempotent: does nothing when everything is there. Needs root (or sudo).
set -euo pipefail

pkgs=(
  clang llvm libelf-dev zlib1g-dev pkg-config   # BPF skeletons, libbpf-sys
  qemu-system-x86 busybox-static cpio xz-utils kmod  # the test VM (skprof-vm)
  zstd lz4                                      # unpack kernels for a faster boot
  bpftool iproute2                              # inspection inside the VM
  tmux                                          # terminal e2e tests (tests/tui_e2e.rs)
  prometheus                                    # scrapes skprof export in tests/vm_export.rs
  g++                                           # libFuzzer, built by cargo fuzz (scripts/fuzz)
  systemd                                       # systemd-analyze verify of packaging/*.service
  chromium fonts-dejavu-core                    # renders the HTML report in tests/report_figures.rs
  jq                                            # reads cargo's JSON in scripts/run-tests
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "skprof: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
