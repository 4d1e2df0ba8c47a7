# Sourced by setup.sh: apt_wait CMD... runs an apt-get command, waiting while another apt / dpkg process
# (an unattended upgrade, another install) holds its lock: up to $MLCL_APT_LOCK_TIMEOUT seconds
# (default 600), then it stops with one line naming the process that holds the lock.
APT_LOCK_TIMEOUT="${MLCL_APT_LOCK_TIMEOUT:-600}"
APT_LOCK_POLL_S="${MLCL_APT_LOCK_POLL_S:-5}"

apt_wait() {
  local log waited=0 status
  log="$(mktemp)"
  while true; do
    status=0
    "$@" 2>"$log" || status=$?
    if [ "$status" -eq 0 ] || ! grep -qE "Could not get lock|Unable to lock|Unable to acquire the dpkg frontend lock" "$log"; then
      cat "$log" >&2
      rm -f "$log"
      return "$status"
    fi
    if [ "$waited" -ge "$APT_LOCK_TIMEOUT" ]; then
      local holder
      holder="$(grep -m1 -oE 'held by process [0-9]+( \([^)]*\))?' "$log" || echo 'held by another process')"
      rm -f "$log"
      echo "setup.sh: the apt/dpkg lock is still ${holder} after ${APT_LOCK_TIMEOUT} s; wait for that install to finish and run scripts/setup.sh again (MLCL_APT_LOCK_TIMEOUT=SECONDS waits longer)" >&2
      return 1
    fi
    if [ "$waited" -eq 0 ]; then
      echo "setup.sh: another apt/dpkg process holds the package lock; waiting up to ${APT_LOCK_TIMEOUT} s for it..." >&2
    fi
    sleep "$APT_LOCK_POLL_S"
    waited=$((waited + APT_LOCK_POLL_S))
  done
}
