#!/usr/bin/env bash
# Transcode speed: `armoricore transcode` against the bare ffmpeg command its ladder
# runs, and against the naive way (one ffmpeg per rung, each decoding the source),
# all on the same generated input, in the same run, on the same machine:
#
#   (a) job       armoricore transcode input.mp4 -o OUT --quiet: probe, one-pass
#                 ladder, master playlist, MP4 remux, thumbnails/sprite/poster, upload
#                 to a local directory (the whole job, process start to exit)
#   (a) ladder    the job's ladder-encode stage alone, from its log's timestamps
#   (b) ffmpeg    the job's own ladder command (taken from (a)'s debug log, output
#                 paths moved), run bare: ffmpeg -hide_banner -y -nostats -v error ...
#   (c) seq/par   one ffmpeg per rung (scale + the same encoder and HLS options) plus
#                 one for the AAC rendition: one after the other, then all at once
#
# Input: testsrc2 1920x1080 30 fps + a sine, encoded once (libx264 ultrafast crf 18,
# AAC) into a temp dir, which is removed at the end. Each variant runs RUNS times,
# rounds interleaved (a, b, c-seq, c-par, a, b, ...); the median is reported.
#
# Knobs (environment): DURATION (seconds of input, 20), RUNS (2), STEP_TIMEOUT
# (seconds one command may take, 1800), BUILD (1: cargo build --release first;
# 0: use the binary as it is), FFMPEG (ffmpeg), JSON=1 (also print one JSON line),
# KEEP=1 (keep the temp dir, for its logs).
# Usage: bench/media.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/armoricore-target ]; then
  export CARGO_TARGET_DIR=/var/tmp/armoricore-target
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
DURATION="${DURATION:-20}"
RUNS="${RUNS:-2}"
STEP_TIMEOUT="${STEP_TIMEOUT:-1800}"
FFMPEG="${FFMPEG:-ffmpeg}"
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --bin armoricore >&2
fi
bin="$target/release/armoricore"
[ -x "$bin" ] || { echo "no $bin (build it, or BUILD=1)" >&2; exit 1; }
"$bin" transcode --help >/dev/null 2>&1 || { echo "$bin has no transcode subcommand (rebuild it)" >&2; exit 1; }

tmp=$(mktemp -d -t armoricore-media.XXXXXX)
pids=()
cleanup() {
  # Each step runs under `timeout`, which leads its own process group: end the
  # groups we started (armoricore and its ffmpeg children included).
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The job's data dir (its default storage and work dir) stays in the temp dir too.
export ARMORICORE_SERVER__DATA_DIR="$tmp/data"

echo "== input: ${DURATION} s of 1920x1080 30 fps + sine (libx264 ultrafast crf 18, aac)" >&2
"$FFMPEG" -hide_banner -nostats -v error -y \
  -f lavfi -i "testsrc2=s=1920x1080:r=30:d=$DURATION" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000:d=$DURATION" \
  -map 0:v -map 1:a -c:v libx264 -preset ultrafast -crf 18 -pix_fmt yuv420p \
  -c:a aac -b:a 128k -shortest "$tmp/input.mp4"
media_s=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/input.mp4" | awk '{ printf "%.2f", $1 }')

# The parsing: the job's log on stderr (JSON lines, or text lines with args=...) → the ladder
# command, the naive commands (output root written as @OUT@), and stage times.
cat >"$tmp/parse.py" <<'PY'
import json, os, re, sys
from datetime import datetime

ANSI = re.compile(r"\x1b\[[0-9;]*m")

def epoch(ts):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", ts)
    if not m:
        return None
    base = datetime.fromisoformat(m.group(1) + (m.group(3) or "Z").replace("Z", "+00:00"))
    return base.timestamp() + float(m.group(2) or 0)

def ffmpeg_lines(path):
    """(epoch seconds, args) of each ffmpeg invocation the job logged."""
    out = []
    for line in open(path, errors="replace"):
        line = ANSI.sub("", line).strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            args = (d.get("fields") or {}).get("args")
            if args is not None:
                out.append((epoch(d.get("timestamp", "")), args))
        elif "args=" in line:
            out.append((epoch(line.split()[0]), line.split("args=", 1)[1]))
    return out

def ladder_index(lines):
    for i, (_, args) in enumerate(lines):
        if "-filter_complex" in args.split() and "split" in args:
            return i
    sys.exit("no ladder command (-filter_complex ... split) in the log")

def ladder(path):
    lines = ffmpeg_lines(path)
    args = lines[ladder_index(lines)][1].split()
    playlists = [a for a in args if a.endswith("/playlist.m3u8")]
    root = os.path.dirname(os.path.dirname(os.path.dirname(playlists[0])))  # .../out
    return [a.replace(root + "/", "@OUT@/") for a in args]

def write(path, args):
    with open(path, "wb") as f:
        f.write(b"\0".join(a.encode() for a in args) + b"\0")

cmd = sys.argv[1]
if cmd == "commands":
    log, dest = sys.argv[2], sys.argv[3]
    args = ladder(log)
    write(f"{dest}/ladder.args", args)
    i = args.index("-i"); source = args[i + 1]
    graph = args[args.index("-filter_complex") + 1]
    chains = {}
    for part in graph.split(";"):
        m = re.fullmatch(r"\[s(\d+)\](.*)\[v(\d+)\]", part)
        if m:
            chains[f"[v{m.group(3)}]"] = m.group(2)
    rest = args[args.index("-filter_complex") + 2:]
    groups, cur = [], None
    for a in rest:
        if a == "-map":
            cur = []
            groups.append(cur)
        if cur is None:
            sys.exit(f"unexpected argument before the first -map: {a}")
        cur.append(a)
    for n, g in enumerate(groups):
        label = g[1]
        if label in chains:  # a video rung: decode, scale, encode, HLS
            naive = ["-i", source, "-map", "0:v:0", "-vf", chains[label]] + g[2:]
            name = os.path.basename(os.path.dirname(g[-1]))
        else:                # the audio rendition
            naive = ["-i", source] + g
            name = "audio"
        write(f"{dest}/naive_{n:02d}_{name}.args", naive)
        print(name, " ".join(g[g.index("-c:v") + 1:g.index("-c:v") + 4]) if "-c:v" in g else "aac")
elif cmd == "stages":
    # stages LOG START END: seconds of each stage of one job run.
    log, start, end = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    lines = ffmpeg_lines(log)
    i = ladder_index(lines)
    t = [ts for ts, _ in lines]
    after = t[i + 1] if i + 1 < len(t) else end
    thumbs = next((ts for ts, a in lines[i + 1:] if "blackdetect" in a), after)
    print(json.dumps({
        "prepare": t[i] - start,        # process start, ffmpeg -encoders, probe
        "ladder": after - t[i],         # the ladder pass (+ ffprobe of each playlist)
        "mp4": thumbs - after,          # MP4 remux
        "rest": end - thumbs,           # thumbnails, sprite, poster, upload, exit
    }))
elif cmd == "median":
    v = sorted(float(x) for x in sys.argv[2:])
    n = len(v)
    print(f"{(v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2):.3f}")
PY
py() { python3 "$tmp/parse.py" "$@"; }

now() { echo "$EPOCHREALTIME"; }

# step CMD...: run CMD with a deadline of STEP_TIMEOUT seconds, in the background so
# that Ctrl-C (the INT trap) interrupts the wait at once; returns its status.
step() {
  timeout "$STEP_TIMEOUT" "$@" &
  local p=$! rc=0
  pids+=("$p")
  wait "$p" || rc=$?
  unpid "$p"
  return "$rc"
}
unpid() {
  local keep=() q
  for q in "${pids[@]}"; do [ "$q" = "$1" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# load FILE OUTDIR: the NUL-separated arguments of FILE into $args, @OUT@ → OUTDIR,
# and the directories of its playlists created.
load() {
  mapfile -d '' args <"$1"
  args=("${args[@]//@OUT@/$2}")
  local a
  for a in "${args[@]}"; do
    case $a in */playlist.m3u8) mkdir -p "$(dirname "$a")" ;; esac
  done
}

declare -A times
add() { times[$1]="${times[$1]:-} $2"; }

# (a): the whole job, with a debug log (JSON lines) for its ffmpeg commands.
run_job() {
  local r=$1 out="$tmp/job-$1"
  rm -rf "$out"
  local t0 t1
  t0=$(now)
  RUST_LOG=armoricore=debug NO_COLOR=1 \
    step "$bin" --log-format json transcode "$tmp/input.mp4" -o "$out" --quiet \
    >"$tmp/job-$r.log" 2>"$tmp/job-$r.err" ||
    { echo "armoricore transcode failed:" >&2; tail -n 20 "$tmp/job-$r.err" "$tmp/job-$r.log" >&2; exit 1; }
  t1=$(now)
  add job "$(secs "$t0" "$t1")"
  py stages "$tmp/job-$r.err" "$t0" "$t1" >"$tmp/stages-$r.json"
  add ladder_stage "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ladder"])' "$tmp/stages-$r.json")"
  rm -rf "$out"
}

# (b): the ladder command, bare.
run_ladder() {
  local out="$tmp/ladder-$1"
  rm -rf "$out"; load "$tmp/cmd/ladder.args" "$out"
  local t0; t0=$(now)
  step "$FFMPEG" -hide_banner -y -nostats -v error "${args[@]}"
  add ladder "$(secs "$t0" "$(now)")"
  rm -rf "$out"
}

# (c): one process per rendition, one after the other / all at once.
run_naive() {
  local mode=$1 out="$tmp/naive-$1-$2" f t0
  rm -rf "$out"
  t0=$(now)
  local started=()
  for f in "$tmp"/cmd/naive_*.args; do
    load "$f" "$out"
    if [ "$mode" = seq ]; then
      step "$FFMPEG" -hide_banner -y -nostats -v error "${args[@]}"
    else
      timeout "$STEP_TIMEOUT" "$FFMPEG" -hide_banner -y -nostats -v error "${args[@]}" &
      pids+=($!); started+=($!)
    fi
  done
  local p rc=0
  for p in "${started[@]}"; do wait "$p" || rc=$?; unpid "$p"; done
  [ "$rc" = 0 ] || { echo "a naive ffmpeg failed ($rc)" >&2; exit 1; }
  add "naive_$mode" "$(secs "$t0" "$(now)")"
  rm -rf "$out"
}

for r in $(seq "$RUNS"); do
  echo "== round $r/$RUNS: (a) armoricore transcode" >&2
  run_job "$r"
  if [ "$r" = 1 ]; then
    mkdir -p "$tmp/cmd"
    py commands "$tmp/job-1.err" "$tmp/cmd" >"$tmp/renditions.txt"
    echo "   renditions: $(awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $0 }' "$tmp/renditions.txt")" >&2
  fi
  echo "== round $r/$RUNS: (b) its ffmpeg ladder command" >&2
  run_ladder "$r"
  echo "== round $r/$RUNS: (c) one ffmpeg per rendition, sequential" >&2
  run_naive seq "$r"
  echo "== round $r/$RUNS: (c) one ffmpeg per rendition, parallel" >&2
  run_naive par "$r"
done

# shellcheck disable=SC2086
med() { py median ${times[$1]}; }
job=$(med job); stage=$(med ladder_stage); ladder=$(med ladder)
seq_=$(med naive_seq); par=$(med naive_par)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
speed() { awk -v d="$media_s" -v t="$1" 'BEGIN { printf "%.2fx", d / t }'; }
stages=$(python3 - "$tmp" "$RUNS" <<'PY'
import json, sys
tmp, runs = sys.argv[1], int(sys.argv[2])
s = [json.load(open(f"{tmp}/stages-{r}.json")) for r in range(1, runs + 1)]
def med(k):
    v = sorted(x[k] for x in s); n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
print(", ".join(f"{k} {med(k):.2f} s" for k in ("prepare", "ladder", "mp4", "rest")))
PY
)

cores=$(nproc)
ffv=$("$FFMPEG" -version | head -n 1 | awk '{ print $3 }')
echo
echo "media: ${media_s} s of 1920x1080 30 fps; renditions: $(awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $1 }' "$tmp/renditions.txt"); ffmpeg $ffv; $cores cores; median of $RUNS"
echo
printf '| %-54s | %8s | %9s | %8s |\n' "variant" "seconds" "vs (b)" "realtime"
printf '|%s|%s|%s|%s|\n' "--------------------------------------------------------" "----------" "-----------" "----------"
printf '| %-54s | %8s | %9s | %8s |\n' "(a) armoricore transcode (whole job)" "$job" "$(ratio "$job" "$ladder")" "$(speed "$job")"
printf '| %-54s | %8s | %9s | %8s |\n' "(a) of which the ladder-encode stage (log timestamps)" "$stage" "$(ratio "$stage" "$ladder")" "$(speed "$stage")"
printf '| %-54s | %8s | %9s | %8s |\n' "(b) its ffmpeg ladder command, bare (one process)" "$ladder" "1.00" "$(speed "$ladder")"
printf '| %-54s | %8s | %9s | %8s |\n' "(c) one ffmpeg per rendition, sequential" "$seq_" "$(ratio "$seq_" "$ladder")" "$(speed "$seq_")"
printf '| %-54s | %8s | %9s | %8s |\n' "(c) one ffmpeg per rendition, all at once" "$par" "$(ratio "$par" "$ladder")" "$(speed "$par")"
echo
echo "job stages (median): $stages"
echo "(the ladder stage runs from the ladder's log line to the next ffmpeg line, so it"
echo " includes the ffprobe of each playlist; 'rest' is thumbnails, sprite, poster, upload, exit)"

if [ "${JSON:-0}" = 1 ]; then
  printf '{"bench":"media","media_s":%s,"runs":%s,"cores":%s,"ffmpeg":"%s","job_s":%s,"job_ladder_stage_s":%s,"ladder_s":%s,"naive_seq_s":%s,"naive_par_s":%s}\n' \
    "$media_s" "$RUNS" "$cores" "$ffv" "$job" "$stage" "$ladder" "$seq_" "$par"
fi
