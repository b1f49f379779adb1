# Shared by the bench scripts (sourced, not run): a scratch directory removed on exit, l2d
# bench nodes started in their own processes, and the learned route policy they serve.

work=$(mktemp -d)
pipes=()
cleanup() {
    for p in "${pipes[@]}"; do exec {p}>&-; done 2> /dev/null || true
    # The nodes stop when their input closes; any still running after that is stopped.
    sleep 1
    kill $(jobs -p) 2> /dev/null || true
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Runs COMMAND (an `l2d bench-node`, maybe under callgrind) with its standard input on a pipe
# this script holds (the node stops when it is closed); waits for `ready`, which the node
# prints to OUT after what it serves. Sets node_pid and node_pipe.
start_node() {
    local out=$1
    shift
    mkfifo "$out.in"
    "$@" < "$out.in" > "$out" 2> "$out.err" &
    node_pid=$!
    exec {node_pipe}> "$out.in"
    pipes+=("$node_pipe")
    for _ in $(seq 600); do
        grep -q '^ready' "$out" 2> /dev/null && return 0
        sleep 0.1
    done
    echo "node did not start: $*" >&2
    cat "$out.err" >&2
    exit 1
}

# Labels the dev set with the default pool's experts and trains the route policy the benches
# serve, with L2D (run from the repository), into $work/route.json.
train_route_policy() {
    local l2d=$1
    "$l2d" label --data data/squad-v1.1/dev.json \
        --experts lr,match-lstm,rnet-plus,slqa-plus,bert-large \
        --out "$work/labels.jsonl" 2> "$work/label.err" || { cat "$work/label.err" >&2; exit 1; }
    "$l2d" train --labels "$work/labels.jsonl" --mode route --lambda 0.05 \
        --out "$work/route.json" 2> "$work/train.err" || { cat "$work/train.err" >&2; exit 1; }
}
