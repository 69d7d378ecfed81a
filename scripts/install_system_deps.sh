#!/usr/bin/env bash
# System packages arimg needs: tesseract-ocr (the judge reads words in images with it).
set -euo pipefail
if command -v tesseract >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install_system_deps: tesseract-ocr is missing and this user cannot apt-get install it" >&2; exit 1
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tesseract-ocr >/dev/null
