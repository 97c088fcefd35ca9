#!/usr/bin/env bash
# Installs the system packages the tests need (Debian): redis-server (and
# redis-cli, which it depends on, to create test clusters) for the
# shared-counter tests, prometheus (with promtool) for the monitoring tests
# (test/monitoring: dashboards and alerts against a real Prometheus). kubectl
# is not one of them: tests use the pinned one from hack/kube-tools.sh.
# Idempotent; does nothing when everything is present.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
echo "install-deps: installing ${need[*]}" >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
