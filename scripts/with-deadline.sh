#!/usr/bin/env bash
# Runs a command bounded in time: usage `with-deadline.sh SECONDS COMMAND...`.
# If the command is still running at its deadline, prints what it was doing —
# the Swift Testing tests that started and never ended (from its output), its
# process tree and, where gdb is installed, every thread's backtrace in each
# test bundle — then kills it and fails. A hung test thus ends the run with a
# diagnosis instead of using up CI's time.
set -uo pipefail
limit=$1; shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# (setsid -w: the process started stays the one waited for, with or without job control.)
setsid -w "$@" > >(tee "$log") 2>&1 &
leader=$!
trap 'kill -TERM -- -$leader 2>/dev/null; rm -f "$log"' INT TERM

descendants() {
    local children
    children=$(pgrep -P "$1" || true)
    for child in $children; do echo "$child"; descendants "$child"; done
}

# The tests whose "started" line has no line saying how they ended.
unfinished() {
    python3 - "$log" <<'EOF'
import re, sys
started, ended = [], set()
for line in open(sys.argv[1], errors="replace"):
    found = re.search(r'Test "(.*)" (started|passed|failed|with \d+ test cases? (passed|failed))', line)
    if not found: continue
    (started.append if found.group(2) == "started" else ended.add)(found.group(1))
for name in dict.fromkeys(started):
    if name not in ended: print("  -", name)
EOF
}

deadline=$((SECONDS + limit))
while kill -0 "$leader" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        {
            echo "with-deadline: '$*' still running after ${limit} s. Tests started and not ended:"
            unfinished
            ps -o pid,ppid,etimes,args --forest -g "$leader" || true
            if command -v gdb > /dev/null; then
                for pid in $(descendants "$leader"); do
                    # (comm is cut to 15 characters: the command line names the test bundle.)
                    tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null | grep -q '\.xctest' || continue
                    echo "with-deadline: threads of $pid:"
                    timeout 120 gdb -p "$pid" -batch -ex 'thread apply all bt 30' 2>/dev/null | grep -E '^(Thread|#)' || true
                done
            fi
        } >&2
        kill -KILL -- -"$leader" 2>/dev/null
        wait "$leader" 2>/dev/null
        echo "with-deadline: killed after ${limit} s" >&2
        exit 124
    fi
    sleep 1
done
wait "$leader"
