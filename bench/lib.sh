# bench/lib.sh: shared helpers for the bench/* scripts (sourced, not run).
#
# Every script: needs root (loop devices, mounts), makes a scratch directory, registers what it
# starts (processes, mounts, sanlock daemons) and undoes all of it on exit, including every loop
# device backed by a file in its scratch directory. Tables go to stdout (Markdown); progress goes
# to stderr.
#
# Settings (environment):
#   RUNS=3        repetitions of the fast cases (under ~3 s each)
#   SLOW_RUNS=1   repetitions of the slow cases (e2fsprogs and kernel waits, 1 s intervals, sanlock)
#   FULL=0        1 = also run the cases that take minutes (bench/run-all sets FULL=1)
#   MMP=path      the mmp binary; default: build it with cargo (release) and use that
#   FORGE=path    the mmp-forge binary (raw writes); default: build it (release) with cargo
#   BENCH_TMP=dir where scratch images go (default /var/tmp; not tmpfs: mmp uses O_DIRECT)

set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
RUNS=${RUNS:-3}
SLOW_RUNS=${SLOW_RUNS:-1}
FULL=${FULL:-0}

log() { printf '[%s %s] %s\n' "$(basename "$0")" "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (loop devices, mounts)"

# ---------------------------------------------------------------- the mmp binary
if [ -z "${MMP:-}" ]; then
    log "building mmp (cargo build --release -p mmp-cli)"
    (cd "$REPO" && cargo build --release -q -p mmp-cli) >&2 || die "cargo build failed"
    MMP=${CARGO_TARGET_DIR:-$REPO/target}/release/mmp
fi
[ -x "$MMP" ] || die "no mmp binary at $MMP"

# ---------------------------------------------------------------- scratch space and cleanup
WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/mmp-bench.XXXXXX")
PIDS=()     # background processes we started
MOUNTS=()   # mount points we mounted (loop devices: every one backed by a file under $WORK)
SANLOCK_DIRS=()  # run directories of sanlock daemons we started

cleanup() {
    local p m l d
    set +e
    trap - EXIT
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for d in "${SANLOCK_DIRS[@]}"; do sanlock_stop "$d"; done
    for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && umount "$m"; done
    for l in $(my_loops); do losetup -d "$l"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- time and statistics
now() { echo "$EPOCHREALTIME"; }                                 # seconds, µs resolution
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# stats V...: "median|min|max" of the numbers given (empty input: "-|-|-")
stats() {
    [ $# -gt 0 ] || { echo "-|-|-"; return; }
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.3f|%.3f|%.3f", med, v[1], v[NR]
        }'
}

# fmt_s V: seconds with 3 decimals, or the text as is
fmt_s() { case $1 in ''|-) echo "-" ;; *[!0-9.]*) echo "$1" ;; *) printf '%.3f s' "$1" ;; esac; }

# row CASE TOOL NOTE V...: one results row, "| case | tool | runs | median | min | max | note |"
row() {
    local case=$1 tool=$2 note=$3; shift 3
    local s med min max
    s=$(stats "$@")
    IFS='|' read -r med min max <<<"$s"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$case" "$tool" "$#" \
        "$(fmt_s "$med")" "$(fmt_s "$min")" "$(fmt_s "$max")" "$note"
}

# row_text CASE TOOL RUNS TEXT NOTE: a row whose result is not a list of measurements
row_text() { printf '| %s | %s | %s | %s | | | %s |\n' "$1" "$2" "$3" "$4" "$5"; }

# result KEY VALUE: record a figure for bench/run-all's goal summary (no-op when run alone)
result() { if [ -n "${BENCH_RESULTS:-}" ]; then echo "$1=$2" >>"$BENCH_RESULTS"; fi; }
median() { stats "$@" | cut -d'|' -f1; }

table_head() {
    echo "| case | tool | runs | median | min | max | notes |"
    echo "|---|---|---|---|---|---|---|"
}

# ---------------------------------------------------------------- machine and versions
mmp_version() {
    local v c
    v=$("$MMP" --version 2>/dev/null | awk '{print $2}')
    c=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)
    if [ -n "$c" ] && [ -n "$(git -C "$REPO" status --porcelain -- mmp-core mmp-cli 2>/dev/null)" ]; then
        c="$c + uncommitted changes"
    fi
    echo "mmp $v, binary $MMP (built $(date -u -r "$MMP" '+%Y-%m-%d %H:%M UTC')); source tree ${c:-unknown}"
}

sanlock_version() {
    if command -v sanlock >/dev/null; then
        echo "sanlock $(sanlock version 2>/dev/null | head -1) (package $(dpkg-query -W -f '${Version}' sanlock 2>/dev/null || echo '?'))"
    else
        echo "sanlock not installed"
    fi
}

# environment TITLE [SETTINGS]: the header every script prints before its table
environment() {
    echo "## $1"
    echo
    echo "| item | value |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| kernel | $(uname -r) |"
    echo "| CPUs (nproc) | $(nproc) |"
    echo "| CPU model | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |"
    echo "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| e2fsprogs | $(mke2fs -V 2>&1 | head -1) |"
    echo "| sanlock | $(sanlock_version) |"
    echo "| mmp | $(mmp_version) |"
    echo "| settings | ${2:-RUNS=$RUNS SLOW_RUNS=$SLOW_RUNS FULL=$FULL} |"
    echo
}

# ---------------------------------------------------------------- devices
# loop_attach FILE: attach a loop device to FILE (under $WORK), print its name
loop_attach() { losetup -f --show "$1" || die "losetup $1 failed"; }
loop_detach() { losetup -d "$1" 2>/dev/null || true; }
# my_loops: the loop devices backed by files under $WORK (only ours)
my_loops() { losetup -l -n -O NAME,BACK-FILE | awk -v w="$WORK/" 'index($2, w) == 1 { print $1 }'; }

do_mount() {  # do_mount DEV DIR: mount ext4, registered for cleanup
    mkdir -p "$2"
    MOUNTS+=("$2")
    mount -t ext4 "$1" "$2"
}

# native_file PATH INTERVAL_MS: a 1 MiB file with a fresh native MMP area
native_file() {
    truncate -s 1M "$1"
    "$MMP" format --interval-ms "$2" "$1" >/dev/null
}

# ext4_image PATH INTERVAL_S [SIZE]: an ext4 file system with MMP (4 KiB blocks)
ext4_image() {
    rm -f "$1"
    mke2fs -F -q -t ext4 -b 4096 -O mmp -E mmp_update_interval="$2" "$1" "${3:-32M}" >/dev/null 2>&1 ||
        die "mke2fs $1 failed"
}

# ---------------------------------------------------------------- raw block writes
# ext4_forge DEV field=value...: rewrite fields of the ext4 MMP block with O_DIRECT
#   (seq, nodename, bdevname, check_interval), re-signed with metadata_csum, through the
#   project's own codec (tests/src/bin/mmp-forge.rs). Prints the wall-clock time just before
#   the write.
# raw_write DEV FILE: write FILE (4096 bytes) at offset 0 of DEV with O_DIRECT; prints the
#   time just before the write.
if [ -z "${FORGE:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p mmp-tests --bin mmp-forge) >&2 ||
        die "cargo build of mmp-forge failed"
    FORGE=${CARGO_TARGET_DIR:-$REPO/target}/release/mmp-forge
fi
ext4_forge() { "$FORGE" ext4 "$@"; }
raw_write() { "$FORGE" raw "$@"; }

# mmp_field DEV KEY: one field of `mmp status --json` (one O_DIRECT read, never waits)
mmp_field() { { "$MMP" status --json "$1" 2>/dev/null || true; } | jq -r ".$2 // empty"; }

# ---------------------------------------------------------------- background processes
# bg_start NAME CMD...: run CMD in the background; its stdout is read through a FIFO by
#   bg_wait, its stderr goes to $WORK/NAME.err. The pid is in ${BPID[NAME]}.
# hold_start NAME ARGS...: bg_start NAME mmp hold ARGS
declare -A BPID BFD
bg_start() {
    local name=$1 fifo fd
    shift
    fifo=$WORK/$name.fifo
    rm -f "$fifo"
    mkfifo "$fifo"
    "$@" >"$fifo" 2>"$WORK/$name.err" &
    BPID[$name]=$!
    PIDS+=($!)
    exec {fd}<"$fifo"
    BFD[$name]=$fd
}
hold_start() { local name=$1; shift; bg_start "$name" "$MMP" hold "$@"; }

# bg_wait NAME [COUNT] [TIMEOUT_S] [PREFIX]: block until NAME printed COUNT lines starting
#   with PREFIX (default "acquired"). Returns 1 (and logs NAME's stderr) if NAME exits or the
#   timeout passes first.
bg_wait() {
    local name=$1 want=${2:-1} timeout=${3:-600} prefix=${4:-acquired} got=0 line
    while [ "$got" -lt "$want" ]; do
        if ! IFS= read -r -t "$timeout" -u "${BFD[$name]}" line; then
            log "$name: $got of $want '$prefix' lines; stderr: $(tail -3 "$WORK/$name.err" | tr '\n' ' ')"
            return 1
        fi
        case $line in "$prefix"*) got=$((got + 1)) ;; esac
    done
}
hold_wait() { bg_wait "$@"; }

# bg_stop NAME [SIGNAL]: signal NAME (default TERM: mmp releases CLEAN), wait for it; its exit
#   status is left in BG_RC
bg_stop() {
    kill -"${2:-TERM}" "${BPID[$1]}" 2>/dev/null || true
    bg_reap "$1"
}
hold_stop() { bg_stop "$@"; }

# bg_reap NAME: wait for NAME to exit by itself; exit status in BG_RC
bg_reap() {
    local name=$1 pid=${BPID[$1]} fd=${BFD[$1]} i
    BG_RC=0
    wait "$pid" 2>/dev/null || BG_RC=$?
    exec {fd}<&-
    unset "BFD[$name]" "BPID[$name]"
    for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$pid" ] && unset 'PIDS[i]'; done
    PIDS=("${PIDS[@]}")
}

# ---------------------------------------------------------------- sanlock (two "hosts")
# Two daemons on one machine with separate run directories and names, as in spec/peers.md:
# no watchdog (-w 0), no mlock (-l 0), no real-time priority (-h 0).
# sanlock_start DIR NAME: start a daemon whose socket lives in DIR
sanlock_start() {
    local dir=$1 name=$2 i
    mkdir -p "$dir"
    SANLOCK_RUN_DIR=$dir SANLOCK_PRIVILEGED=0 \
        sanlock daemon -D -w 0 -l 0 -h 0 -e "$name" >"$dir/daemon.log" 2>&1 &
    PIDS+=($!)
    echo $! >"$dir/bench.pid"
    SANLOCK_DIRS+=("$dir")
    for i in $(seq 50); do [ -S "$dir/sanlock.sock" ] && return 0; sleep 0.1; done
    die "sanlock daemon $name did not start: $(tail -3 "$dir/daemon.log")"
}

# sl DIR ARGS...: run `sanlock ARGS` against the daemon in DIR
sl() { local dir=$1; shift; SANLOCK_RUN_DIR=$dir SANLOCK_PRIVILEGED=0 sanlock "$@"; }

# sanlock_stop DIR: force the daemon down (its lockspaces go with it), by its own pid
sanlock_stop() {
    local dir=$1 p
    [ -f "$dir/bench.pid" ] || return 0
    p=$(cat "$dir/bench.pid")
    sl "$dir" client shutdown -f 1 >/dev/null 2>&1 || true
    sleep 0.2
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    rm -f "$dir/bench.pid"
}

# sanlock_usable: 0 if a daemon can be started here (prints the reason otherwise)
sanlock_usable() {
    command -v sanlock >/dev/null || { echo "sanlock is not installed (apt-get install sanlock)"; return 1; }
    return 0
}
