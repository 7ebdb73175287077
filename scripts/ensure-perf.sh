# Sourced by the perf scripts: installs perf (linux-perf) when it is missing, or exits.
if ! command -v perf >/dev/null 2>&1; then
  echo "installing perf..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf) >/dev/null 2>&1 \
    || { echo "could not install perf (apt-get install linux-perf)" >&2; exit 1; }
fi
