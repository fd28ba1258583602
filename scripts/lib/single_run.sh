# Sourced by scripts/dev.sh: one run per checkout at a time.
#
# A run owns the checkout's .data/: the embedded servers it started (and stops at exit), its Prometheus
# multiprocess directories (emptied at start), the API port. A second run from the same checkout used to
# empty the first one's metrics directories (the first then stopped reporting) and, on its way out, stop
# the first one's embedded PostgreSQL. So the second run is refused, before it touches anything, naming
# the run that owns the checkout. A pid file is enough, and portable (no flock on macOS); one left by a
# run that was killed is recognised (no such process, or not a dev.sh) and taken over.

# claim_single_run PIDFILE NAME: write our pid to PIDFILE, or exit 1 when a live NAME run holds it.
claim_single_run() {
  local pidfile=$1 name=$2 holder attempt
  mkdir -p "$(dirname "$pidfile")"
  for attempt in 1 2; do
    # noclobber: creating the file is atomic, so two runs started together cannot both win.
    if (set -o noclobber; echo "$$" >"$pidfile") 2>/dev/null; then
      return 0
    fi
    holder=$(cat "$pidfile" 2>/dev/null || true)
    if _single_run_alive "$holder" "$name"; then
      echo "[dev] another $name (pid $holder) is already running from this checkout: it owns .data/ (its" \
        "embedded servers and Prometheus files) and its ports. Stop it first (Ctrl-C in its terminal, or" \
        "kill $holder), or run a second stack from another checkout." >&2
      exit 1
    fi
    echo "[dev] taking over $pidfile from pid ${holder:-?}, which is no longer running" >&2
    rm -f "$pidfile"
  done
  echo "[dev] could not claim $pidfile" >&2
  exit 1
}

# release_single_run PIDFILE: remove PIDFILE if it is ours (never another run's).
release_single_run() {
  local pidfile=$1
  [ "$(cat "$pidfile" 2>/dev/null || true)" = "$$" ] && rm -f "$pidfile"
  return 0
}

_single_run_alive() {
  local pid=$1 name=$2 args
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A recycled pid belongs to some other program: only a process running NAME holds the checkout.
  # -ww: never truncated to the terminal width (COLUMNS), which could cut the name off.
  if args=$(ps -ww -o args= -p "$pid" 2>/dev/null); then
    [[ $args == *"$name"* ]]
  else
    return 0 # no ps: trust kill -0
  fi
}
