#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, when they are missing and we can.
#   dataset-fashion-mnist: the real Fashion-MNIST IDX files under /usr/share/datasets/fashion-mnist/
#   chromium: the browser the web-page test of `privdiff serve` drives (Playwright, executable_path)
# Without root (or password-less sudo) we only warn: tests that need the data then skip with a
# message that says how to install it.
set -u
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "warning: missing Debian packages: ${need[*]} (install with: sudo apt-get install -y ${need[*]})" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null \
  || echo "warning: could not install ${need[*]}" >&2
