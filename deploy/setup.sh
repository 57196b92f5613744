#!/usr/bin/env bash
# deploy/setup.sh — install what building and testing paystream needs, if missing.
#   Debian packages: libclang-dev (RocksDB's bindgen), a C/C++ toolchain, libssl-dev and
#   pkg-config (librdkafka's and paystream's TLS and SCRAM), a JDK 17+ and Maven
#   (the real Kafka broker the tests start, and the Java producer of the partitioning test), and
#   prometheus (its promtool checks and unit-tests deploy/prometheus/alerts.yml: tests/alert_rules.rs).
#   Rust via rustup and Go 1.24+ (Jaeger for the tracing test: deploy/jaeger.sh) must already be
#   there (https://rustup.rs, https://go.dev/doc/install).
# `deploy/setup.sh --build-only` skips the JDK, Maven and prometheus (enough for `paystream demo`).
# Idempotent and quiet when everything is present.
set -euo pipefail
build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(build-essential)
# OpenSSL for librdkafka (TLS, SCRAM) and for the group-membership client's TLS and SCRAM.
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "$build_only" = 0 ]; then
  command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
  command -v mvn >/dev/null 2>&1 || need+=(maven)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # No recommends: the prometheus package would pull in (and start) the node exporter.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust with rustup" >&2; exit 1; }
if [ "$build_only" = 0 ] && ! command -v go >/dev/null 2>&1; then
  # Debian's golang-go is too old for Jaeger (deploy/jaeger.sh, tests/tracing.rs needs Go 1.24+).
  echo "setup: go not found; install Go 1.24+ (https://go.dev/doc/install)" >&2
  exit 1
fi
