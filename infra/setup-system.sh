#!/usr/bin/env bash
# Installs the system packages EDPO's servers need, only those that are missing:
# a JDK and Maven (Kafka and Camunda run on the JVM, their jars come from Maven Central)
# and the PostgreSQL server (Debian's package; the project runs its own cluster); headless
# Chromium and its WebDriver for the dashboard's browser tests (tests/e2e/test_dashboard.py).
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system-wide cluster on 5432; EDPO uses its own on another port.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | while read -r v c; do
      $SUDO pg_ctlcluster "$v" "$c" stop 2>/dev/null || true
    done
  fi
fi
