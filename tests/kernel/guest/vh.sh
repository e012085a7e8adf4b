# Shell helpers for the case scripts of varmor's kernel test guest. Every check emits
# exactly one "CHECK <id> PASS|FAIL <detail>" line on fd 9 (the result serial port).
VH_VPROBE=/vprobe
VH_AAFS=/sys/kernel/security/apparmor

vh_emit() { printf '%s\n' "$*" >&9; }

vh_pass() { vh_emit "CHECK $1 PASS $2"; }
vh_fail() { vh_emit "CHECK $1 FAIL $2"; }

# vh_check ID WANT [vprobe args...]: run vprobe, PASS when its verdict is WANT
# (ALLOW|DENY|ERROR).
vh_check() {
  _id=$1; _want=$2; shift 2
  _out=$("$VH_VPROBE" "$@" 2>&1 </dev/null)
  vh_judge "$_id" "$_want" "$_out"
}

# vh_check_label ID LABEL [vprobe args...]: PASS when vprobe ran under LABEL and ALLOWed.
vh_check_label() {
  _id=$1; _lab=$2; shift 2
  _out=$("$VH_VPROBE" "$@" 2>&1 </dev/null)
  case "$_out" in
    *"LABEL $_lab"*"RESULT ALLOW"*) vh_pass "$_id" "label $_lab" ;;
    *) vh_fail "$_id" "want label $_lab, got: $(printf '%s' "$_out" | tr '\n' '|')" ;;
  esac
}

# vh_check_label_after ID WANT LABEL [vprobe args...]: PASS when the verdict is WANT and
# the label vprobe read after the operation is LABEL.
vh_check_label_after() {
  _id=$1; _want=$2; _lab=$3; shift 3
  _out=$("$VH_VPROBE" "$@" 2>&1 </dev/null)
  case "$_out" in
    *"LABEL $_lab
RESULT $_want"*) vh_pass "$_id" "RESULT $_want [$_lab]" ;;
    *) vh_fail "$_id" "want $_want under $_lab, got: $(printf '%s' "$_out" | tr '\n' '|')" ;;
  esac
}

# vh_judge ID WANT OUTPUT: parse vprobe's LABEL/RESULT lines with shell builtins only
# (every fork+exec costs milliseconds under TCG; this runs once per check).
vh_judge() {
  _res=""; _lab=""; _ifs=$IFS
  IFS='
'
  set -f
  for _l in $3; do
    case "$_l" in
      "RESULT "*) _res=$_l ;;
      "LABEL "*) _lab=${_l#LABEL } ;;
    esac
  done
  set +f
  IFS=$_ifs
  case "$_res" in
    "RESULT $2"*) vh_pass "$1" "$_res [$_lab]" ;;
    *) vh_fail "$1" "want $2, got: $(printf '%s' "$3" | tr '\n' '|')" ;;
  esac
}

# vh_run ID CMD...: PASS when the shell command succeeds (setup steps, loads).
vh_run() {
  _id=$1; shift
  if _out=$("$@" 2>&1 </dev/null); then
    vh_pass "$_id" "ok $(printf '%s' "$_out" | tr '\n' '|' | cut -c1-300)"
  else
    vh_fail "$_id" "rc=$? $(printf '%s' "$_out" | tr '\n' '|' | cut -c1-600)"
  fi
}

# Load a host-compiled binary profile (the agent's fast path).
vh_load_bin() { cat "$1" > "$VH_AAFS/.replace"; }
# Load a text profile with the in-guest parser (what deployment does on a node).
vh_load_text() {
  apparmor_parser -r -W --warn=rule-not-enforced --Werror=rule-not-enforced "$1"
}
vh_unload() { echo -n "$1" > "$VH_AAFS/.remove"; }

# Long-running confined processes that never exec again: how a case asks "does a
# process already running under a profile see a replacement?". A server reads one
# operation per line and answers with LABEL/RESULT lines; it talks over two FIFOs held
# on fds IN/OUT of the case shell (3/4 for the first server, 5/6 for a second).
# vh_srv_start IN OUT CMD...
vh_srv_start() {
  _in=$1; _outfd=$2; shift 2
  rm -f "/tmp/vh.$_in.in" "/tmp/vh.$_in.out"
  mkfifo "/tmp/vh.$_in.in" "/tmp/vh.$_in.out"
  "$@" <"/tmp/vh.$_in.in" >"/tmp/vh.$_in.out" 2>&1 &
  eval "VH_SRV_PID_$_in=\$!"
  eval "exec $_in>/tmp/vh.$_in.in $_outfd</tmp/vh.$_in.out"
}

# vh_srv ID WANT IN OUT OP ARGS...: ask a server to do one operation.
vh_srv() {
  _id=$1; _want=$2; _in=$3; _outfd=$4; shift 4
  eval "echo \"\$*\" >&$_in"
  _out=""
  while eval "IFS= read -r _l <&$_outfd"; do
    _out="$_out
$_l"
    case "$_l" in RESULT*) break ;; esac
  done
  vh_judge "$_id" "$_want" "$_out"
}

# vh_srv_label ID LABEL IN OUT: the server's current label must be LABEL.
vh_srv_label() {
  eval "echo current >&$3"
  _out=""
  while eval "IFS= read -r _l <&$4"; do
    _out="$_out|$_l"
    case "$_l" in RESULT*) break ;; esac
  done
  case "$_out" in
    *"|LABEL $2|"*) vh_pass "$1" "label $2" ;;
    *) vh_fail "$1" "want label $2, got: $_out" ;;
  esac
}

vh_srv_stop() {
  eval "echo quit >&$1; exec $1>&- $2<&-"
  eval "wait \$VH_SRV_PID_$1" 2>/dev/null
}

# The vprobe server: vh_serve_start PROFILE / vh_serve ID WANT OP... / vh_serve_stop
vh_serve_start() { vh_srv_start 3 4 "$VH_VPROBE" -p "$1" serve; }
vh_serve() { _a=$1; _b=$2; shift 2; vh_srv "$_a" "$_b" 3 4 "$@"; }
vh_serve_stop() { vh_srv_stop 3 4; }
