#!/usr/bin/env bash
# Side by side on loopback: kubelet-guard against nginx and HAProxy as plain TLS reverse proxies,
# all three in front of the same mutual-TLS upstream (an nginx standing in for the kubelet), driven
# by wrk over keep-alive TLS connections. Issue 11's benchmark.
#
#   cargo build --release && benches/compare.sh
#
# Settings (environment): BENCH_SECONDS (10) per run, BENCH_ROUNDS (1) repetitions of the whole
# comparison, BENCH_WARMUP (2) seconds, BENCH_CONNECTIONS (32), BENCH_THREADS (2), BENCH_AFFINITY
# (1: each peer's workers pinned one per CPU; 0: the kernel places them),
# BENCH_PORT_BASE (18440; five ports from it, seven with KUBELET_GUARD_BASE), KUBELET_GUARD (the binary; default
# target/release/kubelet-guard), BENCH_KEEP=1 keeps the work directory (PKI, configs, logs, wrk
# output), which is also kept when anything failed.
#
# Absolute numbers depend on the machine and on whatever else runs on it; the peers are measured
# in the same run, one after the other, so the ratios are what to compare across machines.
#
# KUBELET_GUARD_BASE=<another build of the guard> measures a change instead: the two builds run at
# once, each driven by half the connections, and the report is each one's CPU time per request
# and their ratio. A sequential run's CPU per request moves by a fifth from one minute to the next
# on a shared machine; two copies of one build measured this way stayed within 2% of each other
# in every round, so a few rounds show a change worth 2–3%. nginx and HAProxy are not measured in
# this mode: processes unlike each other share the cores unevenly when run at once.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin LC_ALL=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
templates=$root/benches/compare
guard_bin=${KUBELET_GUARD:-$root/target/release/kubelet-guard}
base_bin=${KUBELET_GUARD_BASE:-}
seconds=${BENCH_SECONDS:-10} rounds=${BENCH_ROUNDS:-1} warmup=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-32} threads=${BENCH_THREADS:-2} base=${BENCH_PORT_BASE:-18440}
affinity=${BENCH_AFFINITY:-1}
upstream_name=bench-upstream token=bench-token
declare -A port=([upstream]=$base [kubelet-guard]=$((base + 1)) [kubelet-guard-admin]=$((base + 2))
                 [nginx]=$((base + 3)) [haproxy]=$((base + 4)))
peers=(kubelet-guard nginx haproxy)
declare -A binary=([kubelet-guard]=$guard_bin)
guards=(kubelet-guard)
if [ -n "$base_bin" ]; then
  peers+=(guard-base) guards+=(guard-base) binary[guard-base]=$base_bin
  port[guard-base]=$((base + 5)) port[guard-base-admin]=$((base + 6))
fi
bodies=("65 B:/metrics:65" "64 KiB:/metrics/cadvisor:65536")

die() { echo "compare.sh: $*" >&2; exit 1; }
[[ $affinity == [01] ]] || die "BENCH_AFFINITY must be 1 (pinned) or 0 (unpinned), not '$affinity'"

# --- Tools: Debian packages only, and apt-get update only when something is missing.
missing=()
for tool in nginx haproxy wrk openssl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$guard_bin" ] || die "$guard_bin not found: run 'cargo build --release' (or set KUBELET_GUARD)"
[ -z "$base_bin" ] || [ -x "$base_bin" ] || die "KUBELET_GUARD_BASE: $base_bin is not an executable"
for p in "${port[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use: set BENCH_PORT_BASE"; fi
done

# --- Work directory and cleanup: every process started here is stopped by its pid on exit.
work=$(mktemp -d /tmp/kubelet-guard-compare.XXXXXX)
declare -A pid
stop() {
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in {1..50}; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local status=$? name
  for name in "${!pid[@]}"; do stop "${pid[$name]}"; done
  # Logs outlive a failure: the messages above point into the work directory.
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$status" != 0 ] || [ -n "${failed:-}" ]; then
    echo "work directory kept: $work" >&2
  else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# nginx workers drop to an unprivileged user when started as root: they must reach the bodies.
chmod 711 "$work"

# --- Throw-away PKI (ECDSA P-256 everywhere, so no peer gets a cheaper key than another).
pki=$work/pki
mkdir -m 700 "$pki"
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"; }
newkey ca
openssl req -x509 -new -key "$pki/ca.key" -subj /CN=kubelet-guard-bench-ca -days 2 -out "$pki/ca.crt" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
issue() { # name subject extension...
  newkey "$1"
  openssl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -out "$pki/$1.crt" -extfile <(printf '%s\n' basicConstraints=critical,CA:FALSE "${@:3}") 2>/dev/null
  cat "$pki/$1.crt" "$pki/$1.key" >"$pki/$1.pem" # HAProxy's crt takes certificate and key in one file
}
issue front /CN=localhost subjectAltName=IP:127.0.0.1,DNS:localhost extendedKeyUsage=serverAuth
issue upstream "/CN=$upstream_name" "subjectAltName=DNS:$upstream_name" extendedKeyUsage=serverAuth
issue client /CN=kubelet-guard extendedKeyUsage=clientAuth

# --- Bodies and configurations.
mkdir -m 755 "$work/www"
head -c 64 /dev/zero | tr '\0' m >"$work/www/metrics-65" && echo >>"$work/www/metrics-65"
head -c 65536 /dev/zero | tr '\0' c >"$work/www/metrics-64k"
chmod 644 "$work"/www/*
# Pinned workers: the kernel otherwise at times puts two of a peer's workers on one core while
# the other runs wrk and the upstream, and that run loses throughput and tail latency to it.
guard_affinity=() nginx_affinity="# unpinned" haproxy_affinity="# unpinned"
if [ "$affinity" = 1 ]; then
  allowed=$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status)
  guard_affinity=(--worker-cpu-affinity)
  nginx_affinity="worker_cpu_affinity auto;" haproxy_affinity="cpu-map auto:1/1-2 $allowed"
fi
render() { # template destination
  sed -e "s|@DIR@|$work|g" -e "s|@UPSTREAM_PORT@|${port[upstream]}|g" -e "s|@UPSTREAM_NAME@|$upstream_name|g" \
      -e "s|@NGINX_PORT@|${port[nginx]}|g" -e "s|@HAPROXY_PORT@|${port[haproxy]}|g" \
      -e "s|@NGINX_AFFINITY@|$nginx_affinity|g" -e "s|@HAPROXY_AFFINITY@|$haproxy_affinity|g" "$templates/$1" >"$2"
}
mkdir -p "$work"/{upstream/tmp,nginx/tmp,haproxy,guard}
render upstream-nginx.conf "$work/upstream/nginx.conf"
render proxy-nginx.conf "$work/nginx/nginx.conf"
render haproxy.cfg "$work/haproxy/haproxy.cfg"
cp "$templates/policy.yaml" "$templates/tokens.csv" "$work/guard/"

# --- Start upstream and peers, each in the foreground of its own background job.
start() { # name command...
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pid[$name]=$!
}
wait_port() { # name port
  local i
  for i in {1..100}; do
    kill -0 "${pid[$1]}" 2>/dev/null || { cat "$work/$1.log" >&2; die "$1 exited at start-up"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$1 is not listening on $2 after 10 s (log: $work/$1.log)"
}
start upstream nginx -p "$work/upstream/" -c "$work/upstream/nginx.conf" -e "$work/upstream/error.log" -g "daemon off;"
start nginx nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g "daemon off;"
start haproxy haproxy -db -f "$work/haproxy/haproxy.cfg"
for guard in "${guards[@]}"; do
  start "$guard" env KUBELET_GUARD_LOG=warn "${binary[$guard]}" serve \
    --listen="127.0.0.1:${port[$guard]}" --metrics-listen="127.0.0.1:${port[$guard-admin]}" \
    --tls-cert-file="$pki/front.crt" --tls-private-key-file="$pki/front.key" \
    --token-auth-file="$work/guard/tokens.csv" --rbac-policy-file="$work/guard/policy.yaml" \
    --upstream="https://127.0.0.1:${port[upstream]}" --upstream-ca-file="$pki/ca.crt" \
    --upstream-server-name="$upstream_name" \
    --upstream-client-cert-file="$pki/client.crt" --upstream-client-key-file="$pki/client.key" \
    --node-name=bench-node --kubelet-lockdown=off --shutdown-grace-period=1s "${guard_affinity[@]}"
done
for name in upstream nginx haproxy; do wait_port "$name" "${port[$name]}"; done
for guard in "${guards[@]}"; do
  wait_port "$guard" "${port[$guard]}"
  wait_port "$guard" "${port[$guard-admin]}"
  # The guard binds early and reports readiness separately (/readyz, plain HTTP on the admin port).
  for i in {1..100}; do
    status=$( (exec 3<>"/dev/tcp/127.0.0.1/${port[$guard-admin]}" &&
      printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && head -1 <&3) 2>/dev/null || true)
    [[ $status == *" 200"* ]] && break
    [ "$i" = 100 ] && die "$guard /readyz: ${status:-no answer} (log: $work/$guard.log)"
    sleep 0.1
  done
done

# From here on every OpenSSL program is a caller (wrk, s_client): it offers TLS suites in a Go
# client's order, as Prometheus and kubectl do. The peers started above read no such file.
export OPENSSL_CONF=$templates/callers-openssl.cnf
# One request to a peer as a caller, verifying its certificate; s_client's output.
request() { # port path header-line s_client-option...
  local to=$1 path=$2 header=$3
  shift 3
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n' "$path" "$header" |
    timeout 10 openssl s_client -verify_return_error -CAfile "$pki/ca.crt" \
      -connect "127.0.0.1:$to" -servername localhost "$@"
}
# One request through each peer, so a broken chain or a refusal fails here with the response in
# view instead of as a wrk error count.
fetch() { # port path [authorization header line]
  request "$1" "$2" "${3:-}" -quiet 2>/dev/null | head -1 | tr -d '\r'
}
for peer in "${peers[@]}"; do
  for body in "${bodies[@]}"; do
    IFS=: read -r _ path _ <<<"$body"
    line=$(fetch "${port[$peer]}" "$path" "Authorization: Bearer $token"$'\r\n')
    [[ $line == "HTTP/1.1 200"* ]] || die "$peer $path answered '${line:-nothing}' (logs: $work)"
  done
done
# ...and the guard really decides: no token, no metrics.
line=$(fetch "${port[kubelet-guard]}" /metrics)
[[ $line == "HTTP/1.1 401"* ]] || die "kubelet-guard without a token answered '$line', expected 401"
# What each peer negotiated with the caller, and (the upstream's answer to /metrics/probes) with
# the upstream, so the report shows that every peer meets the same TLS on both legs.
negotiated() { # port
  request "$1" /metrics/probes "Authorization: Bearer $token"$'\r\n' -brief -ign_eof 2>&1 |
    awk '/^Protocol version:/ { p = $3 } /^Ciphersuite:/ { c = $2 } /^TLSv/ { u = $1 " " $2 }
         END { printf "%s %s in, %s out", p, c, (u == "" ? "?" : u) }'
}
tls=()
for peer in "${peers[@]}"; do tls+=("$peer $(negotiated "${port[$peer]}")"); done

# --- Measurement helpers.
tck=$(getconf CLK_TCK)
declare -A procs
family() { # pid: it and its direct children (nginx master and workers)
  local stat rest
  echo "$1"
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    rest=${rest##*) }
    set -- "$1" $rest
    [ "$3" = "$1" ] && { stat=${stat#/proc/}; echo "${stat%/stat}"; }
  done
  return 0
}
for name in upstream "${peers[@]}"; do procs[$name]=$(family "${pid[$name]}" | tr '\n' ' '); done
ticks() { # name: "total kernel" CPU ticks of its processes, utime+stime and stime (fields 14, 15 of /proc/pid/stat)
  local p rest sum=0 sys=0
  for p in ${procs[$1]}; do
    read -r rest <"/proc/$p/stat" 2>/dev/null || continue # gone: measure() reports the exit
    rest=${rest##*) }
    set -- $rest; sum=$((sum + ${12} + ${13})) sys=$((sys + ${13}))
  done
  echo "$sum $sys"
}
switches() { # name: context switches so far of its processes' threads, voluntary or not
  local p sum=0
  for p in ${procs[$1]}; do
    sum=$((sum + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches:/ { s += $2 } END { print s + 0 }')))
  done
  echo "$sum"
}
memory() { # name: "RSS PSS" in KiB, summed; PSS splits pages shared between nginx's processes
  local p rss=0 pss=0
  for p in ${procs[$1]}; do
    rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
  done
  echo "$rss $pss"
}
busy() { # ticks the whole machine spent not idle (user nice system irq softirq steal)
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
wrk_cores() { # cores of wrk (user+sys per second), from the children lines of two `times` outputs
  awk 'FNR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } s[++f] = t }
       END { printf "%.2f", (s[2] - s[1]) / secs }' secs="$seconds" "$work/times0" "$work/times1"
}
# wrk prints "Requests/sec", the latency distribution with units us/ms/s/m, the transfer, and
# "Non-2xx or 3xx responses" / "Socket errors" only when there were some.
parse_wrk() {
  awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0
                        if (v ~ /m$/) return v * 60000; if (v ~ /h$/) return v * 3600000; return v * 1000 }
       function bytes(v) { if (v ~ /KB$/) return v * 1024; if (v ~ /MB$/) return v * 1048576
                           if (v ~ /GB$/) return v * 1073741824; return v + 0 }
       /Latency Distribution/ { dist = 1 }
       dist && $1 == "50%" { p50 = ms($2) }  dist && $1 == "99%" { p99 = ms($2) }
       / requests in / { n = $1; read = bytes($5) }  /^Requests\/sec:/ { rps = $2 }
       /Non-2xx or 3xx responses:/ { bad = $NF }
       /Socket errors:/ { sub(/^ *Socket errors: /, ""); gsub(/ /, ""); sock = $0 }
       END { printf "%s %s %s %d %.0f %d %s\n", rps + 0, p50 + 0, p99 + 0, n, read, bad + 0, (sock == "" ? "-" : sock) }' "$1"
}

declare -A r # results: r[round,body,peer,field]
measure() { # round body-index peer
  local round=$1 b=$2 peer=$3 label path size url cpu0 sys0 cs0 up0 all0 cpu1 sys1 cs1 up1 all1
  IFS=: read -r label path size <<<"${bodies[$b]}"
  url="https://127.0.0.1:${port[$peer]}$path"
  wrk -t"$threads" -c"$conns" -d"${warmup}s" -H "Authorization: Bearer $token" "$url" >"$work/warmup.out"
  read -r cpu0 sys0 <<<"$(ticks "$peer")"
  read -r up0 _ <<<"$(ticks upstream)"
  cs0=$(switches "$peer") all0=$(busy)
  times >"$work/times0" # bash builtin: CPU of this shell's finished children, so wrk's own
  wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency -H "Authorization: Bearer $token" "$url" >"$work/wrk.out"
  times >"$work/times1"
  read -r cpu1 sys1 <<<"$(ticks "$peer")"
  read -r up1 _ <<<"$(ticks upstream)"
  cs1=$(switches "$peer") all1=$(busy)
  cp "$work/wrk.out" "$work/wrk-$round-$b-$peer.out"
  read -r rps p50 p99 n bytes bad sock <<<"$(parse_wrk "$work/wrk.out")"
  read -r rss pss <<<"$(memory "$peer")"
  local k="$round,$b,$peer"
  r[$k,rps]=$rps r[$k,p50]=$p50 r[$k,p99]=$p99 r[$k,sock]=$sock
  r[$k,status]=$(verdict "$peer" "$n" "$bytes" "$bad" "$size")
  r[$k,cpu]=$(awk -v t=$((cpu1 - cpu0)) -v n="$n" -v hz="$tck" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
  r[$k,rss]=$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')
  r[$k,pss]=$(awk -v k="$pss" 'BEGIN { printf "%.1f", k / 1024 }')
  r[$k,sys]=$(awk -v s=$((sys1 - sys0)) -v t=$((cpu1 - cpu0)) 'BEGIN { printf "%.0f", t ? 100 * s / t : 0 }')
  r[$k,cs]=$(awk -v c=$((cs1 - cs0)) -v n="$n" 'BEGIN { printf "%.2f", n ? c / n : 0 }')
  r[$k,cores]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$tck" -v s="$seconds" 'BEGIN { printf "%.2f", t / hz / s }')
  r[$k,up]=$(awk -v t=$((up1 - up0)) -v hz="$tck" -v s="$seconds" 'BEGIN { printf "%.2f", t / hz / s }')
  r[$k,wrk]=$(wrk_cores)
  r[$k,other]=$(awk -v t=$((all1 - all0)) -v hz="$tck" -v s="$seconds" -v ours="${r[$k,cores]} ${r[$k,up]} ${r[$k,wrk]}" \
    'BEGIN { split(ours, o, " "); printf "%.2f", t / hz / s - o[1] - o[2] - o[3] }')
  [ "${r[$k,status]}" = ok ] || failed=1
}
verdict() { # peer responses bytes not-2xx body-size: "ok", or what failed
  if ! kill -0 "${pid[$1]}" 2>/dev/null; then echo "FAILED: $1 exited (see $work/$1.log)"
  elif [ "$2" = 0 ]; then echo "FAILED: no responses"
  elif [ "$4" != 0 ]; then echo "FAILED: $4 of $2 responses not 2xx/3xx"
  elif awk -v b="$3" -v n="$2" -v s="$5" 'BEGIN { exit !(b / n < s * 0.99) }'; then
    echo "FAILED: $(($3 / $2)) bytes per response, body is $5"
  else echo ok; fi
}
ratio() { # a b [decimals, 2]
  awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b > 0) printf "%." d "f", a / b; else printf "-" }'
}
table() { # round body-index
  local k peer g other label path size
  IFS=: read -r label path size <<<"${bodies[$2]}"
  printf '\n%s body (GET %s), round %s of %s: wrk -t%s -c%s -d%ss\n' "$label" "$path" "$1" "$rounds" "$threads" "$conns" "$seconds"
  printf '%-14s %9s %8s %8s %11s %5s %6s %8s %8s %6s %6s %6s %6s  %s\n' peer req/s "p50 ms" "p99 ms" "CPU µs/req" \
    "sys %" cs/req "RSS MiB" "PSS MiB" proxy upstr wrk other "socket errors / status"
  for peer in "${peers[@]}"; do
    k="$1,$2,$peer"
    printf '%-14s %9.0f %8.2f %8.2f %10s %5s %6s %8s %8s %6s %6s %6s %6s  %s %s\n' "$peer" "${r[$k,rps]}" \
      "${r[$k,p50]}" "${r[$k,p99]}" "${r[$k,cpu]}" "${r[$k,sys]}" "${r[$k,cs]}" "${r[$k,rss]}" "${r[$k,pss]}" "${r[$k,cores]}" \
      "${r[$k,up]}" "${r[$k,wrk]}" "${r[$k,other]}" "${r[$k,sock]}" "${r[$k,status]}"
  done
  g="$1,$2,kubelet-guard"
  for other in nginx haproxy; do
    k="$1,$2,$other"
    if [ "${r[$g,status]}" != ok ] || [ "${r[$k,status]}" != ok ]; then
      printf 'guard / %-8s  no ratio: a run failed\n' "$other"; continue
    fi
    printf 'guard / %-8s  req/s %s   p99 %s   CPU/req %s\n' "$other" "$(ratio "${r[$g,rps]}" "${r[$k,rps]}")" \
      "$(ratio "${r[$g,p99]}" "${r[$k,p99]}")" "$(ratio "${r[$g,cpu]}" "${r[$k,cpu]}")"
  done
}
median() { # [decimals, 2]
  sort -g | awk -v d="${1:-2}" '{ v[NR] = $1 } END { if (!NR) print "-"; else printf "%." d "f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
summary() { # body-index: the guard's ratios in each round, and their median
  local b=$1 other field label round g k line values
  local -A name=([rps]=req/s [p99]=p99 [cpu]=CPU/req)
  IFS=: read -r label _ _ <<<"${bodies[$b]}"
  for other in nginx haproxy; do
    line=$(printf '%-7s guard / %-8s' "$label" "$other")
    for field in rps p99 cpu; do
      values=()
      for ((round = 1; round <= rounds; round++)); do
        g="$round,$b,kubelet-guard" k="$round,$b,$other"
        if [ "${r[$g,status]}" = ok ] && [ "${r[$k,status]}" = ok ]; then
          values+=("$(ratio "${r[$g,$field]}" "${r[$k,$field]}")")
        fi
      done
      line+=$(printf '  %s %s (%s)' "${name[$field]}" "$(printf '%s\n' "${values[@]}" | median)" "${values[*]}")
    done
    echo "$line"
  done
}

# KUBELET_GUARD_BASE: both guards under wrk at once, half the connections and threads each. The
# wrk processes are in pid[] while they run, so an interrupted run stops them too.
load_both() { # duration path output-prefix [wrk option...]
  local duration=$1 path=$2 out=$3 guard
  shift 3
  for guard in "${guards[@]}"; do
    wrk -t$((threads > 1 ? threads / 2 : 1)) -c$((conns / 2)) -d"${duration}s" "$@" \
      -H "Authorization: Bearer $token" "https://127.0.0.1:${port[$guard]}$path" >"$out-$guard.out" &
    pid[wrk-$guard]=$!
  done
  for guard in "${guards[@]}"; do
    wait "${pid[wrk-$guard]}" || failed=1
    unset "pid[wrk-$guard]"
  done
}
paired() { # round body-index
  local round=$1 b=$2 label path size guard k t1 n bytes bad sock line
  local -A before
  IFS=: read -r label path size <<<"${bodies[$b]}"
  load_both "$warmup" "$path" "$work/warmup"
  for guard in "${guards[@]}"; do read -r "before[$guard]" _ <<<"$(ticks "$guard")"; done
  load_both "$seconds" "$path" "$work/wrk-$round-$b" --latency
  line=$(printf '%-7s round %s:' "$label" "$round")
  for guard in "${guards[@]}"; do
    read -r t1 _ <<<"$(ticks "$guard")"
    k="$round,$b,$guard"
    read -r "r[$k,rps]" _ "r[$k,p99]" n bytes bad sock <<<"$(parse_wrk "$work/wrk-$round-$b-$guard.out")"
    r[$k,status]=$(verdict "$guard" "$n" "$bytes" "$bad" "$size") r[$k,cpu]=-
    if [ "${r[$k,status]}" = ok ]; then
      r[$k,cpu]=$(awk -v t=$((t1 - ${before[$guard]})) -v n="$n" -v hz="$tck" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    else failed=1; fi
    line+=$(printf '  %s %.0f req/s %s µs/req p99 %s ms' "$guard" "${r[$k,rps]}" "${r[$k,cpu]}" "${r[$k,p99]}")
    [ "$sock" = - ] || line+=" socket errors $sock"
    [ "${r[$k,status]}" = ok ] || line+=" ${r[$k,status]}"
  done
  echo "$line   CPU/req this / base $(ratio "${r[$round,$b,kubelet-guard,cpu]}" "${r[$round,$b,guard-base,cpu]}" 3)"
}

reproduce() {
  # The binaries go in the command's environment: "KUBELET_GUARD=… && …" would set a shell
  # variable the script never sees, and measure the default build instead.
  local build="cargo build --release && "
  [ -z "${KUBELET_GUARD:-}" ] || build="KUBELET_GUARD=$KUBELET_GUARD "
  [ -z "$base_bin" ] || build+="KUBELET_GUARD_BASE=$base_bin "
  echo "reproduce: cd $root && ${build}BENCH_SECONDS=$seconds BENCH_ROUNDS=$rounds" \
       "BENCH_WARMUP=$warmup BENCH_CONNECTIONS=$conns BENCH_THREADS=$threads BENCH_AFFINITY=$affinity benches/compare.sh"
}

# --- Report.
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || commit="$commit (src modified)"
echo "machine:  $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v | head -1 | cut -d' ' -f1-3);" \
     "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(openssl version | cut -d' ' -f1-2); $("$guard_bin" --version) at $commit"
if [ -n "$base_bin" ]; then
  echo "paired:   kubelet-guard = $guard_bin, guard-base = $base_bin ($("$base_bin" --version));" \
       "both at once, wrk -t$((threads > 1 ? threads / 2 : 1)) -c$((conns / 2)) -d${seconds}s each"
  for ((round = 1; round <= rounds; round++)); do
    for b in "${!bodies[@]}"; do paired "$round" "$b"; done
  done
  for b in "${!bodies[@]}"; do
    IFS=: read -r label _ _ <<<"${bodies[$b]}"
    values=()
    for ((round = 1; round <= rounds; round++)); do
      if [ "${r[$round,$b,kubelet-guard,status]}" = ok ] && [ "${r[$round,$b,guard-base,status]}" = ok ]; then
        values+=("$(ratio "${r[$round,$b,kubelet-guard,cpu]}" "${r[$round,$b,guard-base,cpu]}" 3)")
      fi
    done
    median=-
    ((${#values[@]} == 0)) || median=$(printf '%s\n' "${values[@]}" | median 3)
    printf '%-7s CPU/req this / base: median %s (%s)\n' "$label" "$median" "${values[*]}"
  done
  reproduce
  [ -z "${failed:-}" ] || die "a run failed: see above"
  exit 0
fi
pinned="workers unpinned"; [ "$affinity" = 1 ] && pinned="workers pinned one per CPU (BENCH_AFFINITY=1)"
echo "setup:    upstream nginx worker_processes 1; nginx worker_processes auto ($(nproc)); haproxy nbthread 2; $pinned;" \
     "all peers TLS in, mutual TLS out over keep-alive pools; guard in embedded mode (static token, RBAC file)"
echo "tls:      $(IFS=';'; echo "${tls[*]}" | sed 's/;/; /g')"
echo "columns:  sys % = the peer's CPU time spent in the kernel (loopback TCP, wake-ups, task switches);" \
     "cs/req = context switches of the peer's threads per request, voluntary or preempted;"
echo "          proxy/upstr/wrk/other = cores busy during the run (CPU time / duration) in the peer, the upstream," \
     "wrk, and everything else on the machine (noise); RSS sums the peer's processes after the run, PSS splits shared pages"
for ((round = 1; round <= rounds; round++)); do
  # Rotate the order each round so no peer always runs first (or after the same neighbour).
  order=("${peers[@]:$(((round - 1) % 3))}" "${peers[@]:0:$(((round - 1) % 3))}")
  for b in "${!bodies[@]}"; do
    for peer in "${order[@]}"; do measure "$round" "$b" "$peer"; done
  done
  for b in "${!bodies[@]}"; do table "$round" "$b"; done
done
if ((rounds > 1)); then
  printf '\nratios of the guard, median of %s rounds (each round in parentheses):\n' "$rounds"
  for b in "${!bodies[@]}"; do summary "$b"; done
fi
echo
reproduce
[ -z "${failed:-}" ] || die "a run failed: see the status column"
