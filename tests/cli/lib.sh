# tests/cli/lib.sh: the harness the CLI tests share (sourced, not run).
# Each case runs commands, collects failed expectations in `why`, and ends
# with done_case NAME ("ok - NAME" or "not ok - NAME" with the reasons and the
# start of stderr). The script ends with finish, which prints the counts and
# returns non-zero when a case failed. Needs $tmp (a scratch folder).

passed=0 failed=0 skipped=0
why=()
rc=0
have_h5py=0
if /usr/bin/python3 -c 'import h5py' 2>/dev/null; then have_h5py=1; fi

# run TOOL ARGS...: stdout in $tmp/out, stderr in $tmp/err, status in $rc.
run() { "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
expect_rc() { [[ "$rc" == "$1" ]] || why+=("exit status $rc, expected $1"); }
expect_out() { grep -q -- "$1" "$tmp/out" || why+=("stdout lacks '$1'"); }
expect_err() { grep -q -- "$1" "$tmp/err" || why+=("stderr lacks '$1'"); }
expect_file() { [[ -s "$1" ]] || why+=("missing or empty: $1"); }
expect_no_file() { [[ ! -e "$1" ]] || why+=("should not exist: $1"); }
# A runtime failure of TOOLNAME: exit 1, "TOOLNAME: error:", a hint, and PATTERN if given.
expect_runtime_error() {
    expect_rc 1
    expect_err "^$1: error: "
    expect_err "^hint: "
    [[ $# -gt 1 ]] && expect_err "$2"
    return 0
}
# A usage error of TOOLNAME: exit 2, "TOOLNAME: usage error:", and PATTERN if given.
expect_usage_error() {
    expect_rc 2
    expect_err "^$1: usage error: "
    [[ $# -gt 1 ]] && expect_err "$2"
    return 0
}
done_case() {
    if ((${#why[@]} == 0)); then
        echo "ok - $1"
        passed=$((passed + 1))
    else
        echo "not ok - $1"
        local w
        for w in "${why[@]}"; do echo "#   $w"; done
        echo "#   stderr:"
        sed -n '1,12s/^/#     /p' "$tmp/err"
        failed=$((failed + 1))
    fi
    why=()
}
skip_case() {
    echo "ok - $1 # SKIP $2"
    skipped=$((skipped + 1))
    why=()
}
finish() {
    echo "# $passed passed, $failed failed, $skipped skipped"
    ((failed == 0))
}
# same_checkpoint A B: the same /weights, /ema and /train_state, every tensor
# bit for bit (h5py; callers check have_h5py).
same_checkpoint() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
def walk(g, out, prefix=""):
    for k, v in g.items():
        if isinstance(v, h5py.Group): walk(v, out, prefix + k + "/")
        else: out[prefix + k] = v[()]
for grp in ("weights", "ema", "train_state"):
    x, y = {}, {}
    walk(a[grp], x); walk(b[grp], y)
    if x.keys() != y.keys(): sys.exit(f"{grp}: different tensors")
    for k in x:
        if not np.array_equal(x[k].view(np.uint8), y[k].view(np.uint8)): sys.exit(f"{grp}/{k} differs")
PY
}
