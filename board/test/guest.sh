#!/bin/bash
# The board test, inside the emulated arm64 guest (run by board-test.service under systemd).
#
# 1. Loads configfs and the out-of-tree gpio-sim module, creates a simulated chip whose bank
#    is labelled "tickguard-sim" (LED on line 0, buzzer on line 1: the qemu-virt profile).
# 2. Phase A: installs the tickguard .deb with dpkg (its postinst creates the user and the gpio
#    group, reloads udev, enables and starts the shipped unit); a drop-in runs `demo` instead
#    of `run`, with the package's /etc config (indicator enabled, board = "auto"). Samples the
#    simulated line values for 63 s and reads the RSS 60 s after start.
# 3. Phase B: the same with `--fault engine-hang@4s` and the explicit qemu-virt profile:
#    the engine loop stalls, keep-alives stop, systemd's watchdog kills and restarts it.
# 4. Phase C: the chip goes away under the running service (gpio-sim unplugged) and comes
#    back under another number: the protection keeps running, the lines are found again by
#    label.
# 5. Phase D: an idle-connection flood against the demo's API (1000 connections over 8 source
#    addresses and 300 from one, /board/tgflood) under the shipped unit's TasksMax and
#    MemoryMax: samples the peaks of the threads, RSS and the unit's cgroup, probes with the
#    token meanwhile; the process must be the same one afterwards.
# 6. Prints the samples and the service's journal on the console, prefixed, then one result
#    marker, and powers off. scripts/board-test checks the marker and analyses the data with
#    board/test/analyze.py.
set -u
CON=/dev/console
G=/sys/kernel/config/gpio-sim/tg
DROPIN=/etc/systemd/system/tickguard.service.d/board-test.conf
UNIT=tickguard.service

say() { echo "$*" >"$CON"; }

finish() {
  sync
  systemctl poweroff --force --force
  sleep 30
}

fail() {
  say "TICKGUARD-BOARD: FAILED: $*"
  dump_diag
  say "TICKGUARD-BOARD-RESULT: fail $*"
  finish
}

dump_diag() {
  {
    systemctl status --no-pager -l "$UNIT" 2>&1 | sed 's/^/TGD /'
    journalctl -b --no-pager -o short-unix -n 200 2>&1 | sed 's/^/TGD /'
    [[ -f /run/dpkg.log ]] && sed 's/^/TGD dpkg: /' /run/dpkg.log
  } >"$CON"
}

# Prints the file $2 as lines "TGB <tag> <line>", then a count line.
emit() {
  local tag=$1 file=$2 n
  n=$(wc -l <"$file")
  sed "s/^/TGB $tag /" "$file" >"$CON"
  say "TGB-COUNT $tag $n"
}

# Samples the LED and buzzer values every ~10 ms, writing "<epoch s.us> <led> <buzzer>" on
# each change to $1, until killed; and "G <from_us> <to_us>" when two samples are more than
# 100 ms apart (the sampler was starved: changes in between were seen late, or not at all).
# Builtins only (no fork per sample).
sampler() {
  local out=$1 l b pl=x pb=x now last
  local fifo=/run/sampler.fifo
  [[ -p $fifo ]] || mkfifo "$fifo"
  exec 9<>"$fifo"
  : >"$out"
  last=${EPOCHREALTIME/./}
  while :; do
    now=${EPOCHREALTIME/./}
    if ((now - last > 100000)); then
      echo "G $last $now" >>"$out"
    fi
    last=$now
    read -r l <"$LED"
    read -r b <"$BUZ"
    if [[ $l != "$pl" || $b != "$pb" ]]; then
      echo "$EPOCHREALTIME $l $b" >>"$out"
      pl=$l
      pb=$b
    fi
    read -r -t 0.01 -u 9 _ || true
  done
}

prop() { systemctl show -p "$1" --value "$UNIT"; }

say "TICKGUARD-BOARD: guest up, kernel $(uname -r), $(nproc) cpu(s)"

# --- the simulated GPIO chip -------------------------------------------------------------
insmod /board/configfs.ko 2>/dev/null || grep -q configfs /proc/filesystems || fail "insmod configfs.ko"
insmod /board/tickguard-gpio-sim.ko || fail "insmod tickguard-gpio-sim.ko (out-of-tree gpio-sim)"
# systemd mounts configfs by itself once the module is in (sys-kernel-config.mount): race it.
for _ in $(seq 1 25); do
  mountpoint -q /sys/kernel/config && break
  mount -t configfs none /sys/kernel/config 2>/dev/null && break
  sleep 0.2
done
mountpoint -q /sys/kernel/config || fail "mount configfs"
mkdir "$G" "$G/bank0" "$G/bank0/line0" "$G/bank0/line1" || fail "configfs gpio-sim entries"
echo 8 >"$G/bank0/num_lines"
echo tickguard-sim >"$G/bank0/label"
echo led >"$G/bank0/line0/name"
echo buzzer >"$G/bank0/line1/name"
echo 1 >"$G/live" || fail "gpio-sim chip did not go live"
DEV=$(cat "$G/dev_name")
CHIP=$(cat "$G/bank0/chip_name")
LED=/sys/devices/platform/$DEV/$CHIP/sim_gpio0/value
BUZ=/sys/devices/platform/$DEV/$CHIP/sim_gpio1/value
[[ -r $LED && -r $BUZ ]] || fail "no sim line values at $LED"
say "TICKGUARD-BOARD: gpio-sim $DEV bank0 is $CHIP; chips: $(echo /dev/gpiochip*)"

# --- phase A: the package, the shipped unit, the demo ------------------------------------
mkdir -p "$(dirname "$DROPIN")"
cat >"$DROPIN" <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/tickguard demo --config /etc/tickguard/tickguard.toml
EOF
sampler /run/samples-A &
SAMPLER=$!
say "TGM A-install $EPOCHREALTIME"
dpkg -i /board/tickguard.deb >/run/dpkg.log 2>&1 || fail "dpkg -i tickguard.deb"
say "TGM A-installed $EPOCHREALTIME"
systemctl is-active --quiet "$UNIT" || fail "tickguard.service is not active after the install"
PID_A=$(prop MainPID)
say "TICKGUARD-BOARD: phase A: tickguard.service active, MainPID $PID_A"
say "TGM A-dev /dev/$CHIP $(stat -c '%A %U:%G' /dev/"$CHIP")"
say "TGM A-user $(awk '/^Uid:/{print $2} /^Groups:/{$1=""; print $0}' /proc/"$PID_A"/status | tr '\n' ' ')"
say "TGM A-ids tickguard=$(id -u tickguard) gpio=$(awk -F: '$1 == "gpio" {print $3}' /etc/group)"
sleep 60
RSS=$(awk '/^VmRSS:/{print $2}' /proc/"$PID_A"/status)
HWM=$(awk '/^VmHWM:/{print $2}' /proc/"$PID_A"/status)
THREADS=$(awk '/^Threads:/{print $2}' /proc/"$PID_A"/status)
say "TGM A-rss rss_kb=$RSS hwm_kb=$HWM threads=$THREADS"
sleep 3
kill "$SAMPLER"
wait "$SAMPLER" 2>/dev/null
say "TGM A-end $EPOCHREALTIME"
say "TGM A-status nrestarts=$(prop NRestarts) mainpid=$(prop MainPID) status_text=$(prop StatusText)"
[[ "$(prop MainPID)" == "$PID_A" ]] || fail "the demo restarted during phase A"
journalctl -u "$UNIT" -o short-unix --no-pager >/run/journal-A
emit A /run/samples-A
emit J-A /run/journal-A

# --- phase B: engine hang, watchdog, restart ----------------------------------------------
cat >"$DROPIN" <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/tickguard demo --config /etc/tickguard/tickguard.toml --fault engine-hang@4s
Environment=TICKGUARD_INDICATOR_BOARD=qemu-virt
EOF
systemctl daemon-reload
SINCE=$EPOCHSECONDS
sampler /run/samples-B &
SAMPLER=$!
say "TGM B-restart $EPOCHREALTIME"
systemctl restart "$UNIT" || fail "restart for phase B"
PID_B=$(prop MainPID)
N0=$(prop NRestarts)
say "TICKGUARD-BOARD: phase B: MainPID $PID_B, engine hang at 4 s, WatchdogSec=$(prop WatchdogUSec)"
restarted=""
for _ in $(seq 1 90); do
  sleep 0.5
  n=$(prop NRestarts)
  pid=$(prop MainPID)
  if [[ $n -gt $N0 && $pid != "$PID_B" && $pid != 0 ]] && systemctl is-active --quiet "$UNIT"; then
    restarted=$pid
    break
  fi
done
[[ -n $restarted ]] || fail "systemd did not restart the hung service within 45 s"
say "TGM B-restarted $EPOCHREALTIME pid=$restarted nrestarts=$(prop NRestarts)"
sleep 5
kill "$SAMPLER"
wait "$SAMPLER" 2>/dev/null
say "TGM B-end $EPOCHREALTIME"
journalctl -u "$UNIT" -o short-unix --no-pager --since "@$SINCE" >/run/journal-B
emit B /run/samples-B
emit J-B /run/journal-B

# --- phase C: the chip goes away and comes back -------------------------------------------
cat >"$DROPIN" <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/tickguard demo --config /etc/tickguard/tickguard.toml
Environment=TICKGUARD_INDICATOR_BOARD=qemu-virt
EOF
systemctl daemon-reload
SINCE=$EPOCHSECONDS
# The hung instance of phase B would take TimeoutStopSec to stop: kill it.
systemctl kill --signal=SIGKILL "$UNIT"
systemctl restart "$UNIT" || fail "restart for phase C"
sleep 3
PID_C=$(prop MainPID)
N_C=$(prop NRestarts)
say "TGM C-unplug $EPOCHREALTIME chip=$CHIP"
echo 0 >"$G/live" || fail "gpio-sim would not go offline"
sleep 3
echo 1 >"$G/live" || fail "gpio-sim would not come back"
DEV=$(cat "$G/dev_name")
CHIP=$(cat "$G/bank0/chip_name")
LED=/sys/devices/platform/$DEV/$CHIP/sim_gpio0/value
BUZ=/sys/devices/platform/$DEV/$CHIP/sim_gpio1/value
say "TGM C-replug $EPOCHREALTIME chip=$CHIP"
sampler /run/samples-C &
SAMPLER=$!
# The indicator retries every 5 s; give it three chances, then watch it blink.
for _ in $(seq 1 30); do
  journalctl -u "$UNIT" --no-pager --since "@$SINCE" | grep -q 'event=line_restored' && break
  sleep 0.5
done
sleep 4
kill "$SAMPLER"
wait "$SAMPLER" 2>/dev/null
say "TGM C-end $EPOCHREALTIME"
say "TGM C-status pid_before=$PID_C pid=$(prop MainPID) nrestarts_before=$N_C nrestarts=$(prop NRestarts) active=$(systemctl is-active "$UNIT")"
journalctl -u "$UNIT" -o short-unix --no-pager --since "@$SINCE" >/run/journal-C
emit C /run/samples-C
emit J-C /run/journal-C

# --- phase D: an idle-connection flood against the API, under the unit's limits ----------
# The demo of phase C serves its API on loopback (api.listen). /board/tgflood opens 1000 idle
# connections over 8 source addresses and 300 from one, holds them FLOOD_HOLD s and asks
# with the right token every second meanwhile; a sampler records the peaks of the main
# process's threads and RSS and of the unit's cgroup (pids.current, memory.current): what
# TasksMax and MemoryMax limit.
FLOOD_HOLD=20
PID_D=$(prop MainPID)
N_D=$(prop NRestarts)
CG=/sys/fs/cgroup$(prop ControlGroup)
SINCE_D=$EPOCHSECONDS
API=$(journalctl -u "$UNIT" -o cat --no-pager --since "@$SINCE" | sed -n 's|.*status page: http://\([0-9.]*:[0-9]*\)/.*|\1|p' | tail -n 1)
TOKEN_PATH=$(journalctl -u "$UNIT" -o cat --no-pager --since "@$SINCE" | sed -n 's|.*log in with the token in \(/[^)]*\)).*|\1|p' | tail -n 1)
PORT=${API##*:}
[[ ${API%%:*} == 127.* && -n $PORT ]] || fail "phase D: the demo's API address was not found in the journal (got '$API')"
# PrivateTmp: the token is in the service's own /tmp, seen through its root.
TOKEN_FILE=/proc/$PID_D/root$TOKEN_PATH
[[ -n $TOKEN_PATH && -r $TOKEN_FILE ]] || say "TICKGUARD-BOARD: phase D: no token file ($TOKEN_PATH): probing skipped"
say "TGM D-limits tasks_max=$(prop TasksMax) memory_max=$(prop MemoryMax) limit_nofile=$(prop LimitNOFILE) api=$API"

flood_sampler() {
  local out=$1 pid=$2 th=0 rss=0 hwm=0 tasks=0 mem=0 k v t m n=0
  while [[ ! -e /run/flood.stop ]]; do
    if [[ -r /proc/$pid/status ]]; then
      while read -r k v _; do
        case $k in
          Threads:) ((v > th)) && th=$v ;;
          VmRSS:) ((v > rss)) && rss=$v ;;
          VmHWM:) ((v > hwm)) && hwm=$v ;;
        esac
      done <"/proc/$pid/status"
    fi
    read -r t <"$CG/pids.current" 2>/dev/null && ((t > tasks)) && tasks=$t
    read -r m <"$CG/memory.current" 2>/dev/null && ((m > mem)) && mem=$m
    n=$((n + 1))
    read -r -t 0.2 -u 9 _ || true
  done
  echo "threads=$th rss_kb=$rss hwm_kb=$hwm tasks=$tasks memory_current=$mem samples=$n" >"$out"
}
rm -f /run/flood.stop /run/flood-peak
[[ -p /run/sampler.fifo ]] || mkfifo /run/sampler.fifo
exec 9<>/run/sampler.fifo
flood_sampler /run/flood-peak "$PID_D" &
FS=$!
say "TGM D-start $EPOCHREALTIME pid=$PID_D nrestarts=$N_D"
RESULT=$(/board/tgflood "$PORT" "$FLOOD_HOLD" 1000/8+300 "$TOKEN_FILE" 2>&1) || fail "phase D: tgflood: $RESULT"
say "TGM D-flood $RESULT"
# The server drops what it held; the process and its cgroup must be unchanged.
sleep 3
touch /run/flood.stop
wait "$FS" 2>/dev/null
say "TGM D-peak $(cat /run/flood-peak) memory_peak=$(cat "$CG/memory.peak" 2>/dev/null || echo -)"
say "TGM D-status pid_before=$PID_D pid=$(prop MainPID) nrestarts_before=$N_D nrestarts=$(prop NRestarts) active=$(systemctl is-active "$UNIT") result=$(prop Result)"
journalctl -u "$UNIT" -o short-unix --no-pager --since "@$SINCE_D" >/run/journal-D
emit J-D /run/journal-D

say "TICKGUARD-BOARD-RESULT: ok rss_kb=$RSS"
finish
