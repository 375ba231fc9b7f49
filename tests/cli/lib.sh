# lib.sh - what the command's shell tests share. Sourced by
# tests/cli/test_*.sh after they set W (a scratch directory, emptied here).
#   fail MSG            print FAIL: MSG and exit 1
#   expect_status N CMD run CMD (stdout in $W/out, stderr in $W/err), fail
#                       unless its status is N; counts a check
#   expect_error CMD    status 1 or 2 and exactly one stderr line "exitrt: ..."
#   json_get FILE EXPR  print the Python expression EXPR on the JSON j in FILE
rm -rf "$W"
mkdir -p "$W"

checks=0
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() {
    checks=$((checks + 1))
}

expect_status() {
    local want=$1
    shift
    local rc=0
    "$@" >"$W/out" 2>"$W/err" || rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "--- stdout" >&2; head -20 "$W/out" >&2
        echo "--- stderr" >&2; head -20 "$W/err" >&2
        fail "status $rc (want $want): $*"
    fi
    ok
}

expect_error() {
    local rc=0
    "$@" >"$W/out" 2>"$W/err" || rc=$?
    [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ] || fail "status $rc (want 1 or 2): $*"
    [ "$(wc -l <"$W/err")" -eq 1 ] || { cat "$W/err" >&2; fail "stderr is not one line: $*"; }
    grep -q '^exitrt: ' "$W/err" || fail "stderr does not start with 'exitrt: ': $*"
    ok
}

json_get() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
