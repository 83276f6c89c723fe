#!/usr/bin/env bash
# Regenerates bpf/vmlinux.h (x86_64) from a kernel's BTF. The committed copy
# comes from a 6.18 kernel; CO-RE relocations adapt it to the running kernel
# (6.1+ tested), so regenerate only to use types or fields it lacks.
#   scripts/gen-vmlinux.sh [BTF_FILE]   (default: /sys/kernel/btf/vmlinux)
set -euo pipefail
cd "$(dirname "$0")/.."
btf=${1:-/sys/kernel/btf/vmlinux}
command -v bpftool >/dev/null || { echo "needs bpftool (apt-get install bpftool)" >&2; exit 1; }
bpftool btf dump file "$btf" format c > bpf/vmlinux.h.tmp
mv bpf/vmlinux.h.tmp bpf/vmlinux.h
echo "bpf/vmlinux.h regenerated from $btf ($(wc -l < bpf/vmlinux.h) lines)"
