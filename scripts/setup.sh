#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine needs to build, test and run Vitrine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  dataset-fashion-mnist   # Fashion-MNIST idx files under /usr/share/datasets/fashion-mnist
  mesa-vulkan-drivers     # lavapipe: software Vulkan, so the wgpu backend runs without a GPU
  pkg-config
  chromium                # headless browser for the search-page test
  nodejs                  # runs the browser test (Playwright)
  wrk                     # HTTP load generator for scripts/load.sh
  curl
  openmpi-bin             # mpirun: multi-process training (cargo feature mpi) and its tests
  libopenmpi-dev          # the MPI library and headers rsmpi builds against
  libclang-dev            # bindgen, for rsmpi's bindings
)
# Debian ships npm apart from nodejs; other nodejs builds include it.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: system packages present"
fi

# Playwright's driver (no browser download: the test uses Debian's chromium).
browser="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
if [ ! -d "$browser/node_modules/playwright-core" ]; then
  echo "setup: npm ci (tests/browser)"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust >= 1.92 (https://rustup.rs) and re-run" >&2
  exit 1
fi
echo "setup: done ($(cargo --version))"
