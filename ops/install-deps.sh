#!/usr/bin/env bash
# Installs every Debian package that vlorch's build, tests, demo and benchmarks need.
#
# Idempotent: packages already present are skipped by apt, and `apt-get update` only runs
# when a package is missing. Uses --no-install-recommends so a fresh machine pulls in what
# the project needs and nothing more. Run as root, or with sudo available.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # LibTorch (CPU) and a fast BLAS for it: without libopenblas0-openmp LibTorch falls back
  # to reference BLAS, which is about 20x slower for the matmuls training does.
  libtorch-dev libopenblas0-openmp
  # MPI (launcher and library)
  openmpi-bin libopenmpi-dev
  # shard store, control plane, HTTP
  librocksdb-dev libzmq3-dev cppzmq-dev libboost-dev
  # formats, CLI, logging
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  # data: JPEG, tokenizers, archives
  libturbojpeg0-dev libjpeg62-turbo-dev libsentencepiece-dev libarchive-dev libzip-dev
  # Unicode character classes for the GPT-2 pre-tokeniser
  libicu-dev
  # tests; clang and its runtimes for the libFuzzer targets and sanitizer builds (ops/fuzz.sh)
  libgtest-dev libgmock-dev clang-14 libclang-rt-14-dev
  # benchmark baselines (Python PyTorch peers) and scripts
  python3 python3-torch python3-torchvision python3-pil python3-numpy
  # reference tokeniser in tests (the regex engine GPT-2's pattern was written for)
  python3-regex python3-sentencepiece
  # used by tests and scripts
  procps
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
