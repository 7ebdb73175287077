# Sourced by the bench scripts: starts `flowd run` on a dataflow and waits until it
# listens (its doors print `listening KIND ADDR`, http last).
#   flowd_work NAME                  sets $work, a fresh directory, and $pid (none yet):
#                                    on exit the engine $pid is stopped, $work removed
#   start_flowd FLOWD DATAFLOW DIR   sets $pid; DIR/out and DIR/err take its output
#   listen_addr DIR KIND             the address it listens on for KIND (tcp, http, kafka)
flowd_work() {
    work=$(mktemp -d "/var/tmp/flowd-$1.XXXXXX")
    pid=""
    trap flowd_work_cleanup EXIT
}

flowd_work_cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}

start_flowd() {
    "$1" run "$2" > "$3/out" 2> "$3/err" &
    pid=$!
    for _ in $(seq 100); do
        grep -q '^listening http' "$3/out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not start within 10 s: $(cat "$3/err")" >&2
    return 1
}

listen_addr() {
    awk -v kind="$2" '$1 == "listening" && $2 == kind {print $3}' "$1/out"
}
