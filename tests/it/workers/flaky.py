"""A JSON-lines exec worker for flowd's tests: doubles each number, and misbehaves on cue.

Every count below is per process, so a restarted worker starts over:
  --crash-every N    exit(1) after answering N records (leaving what it read unanswered)
  --hang-every N     stop answering (sleep) after answering N records
  --garbage-every N  write a line that is not JSON as the N-th answer
  --unknown-every N  answer an id it was never given as the N-th answer
  --huge-every N     write a line of 4 KiB as the N-th answer
  --refuse V         answer {"error": ...} for the value V, every time
  --torn-every N     write half an answer line and exit as the N-th answer
  --key pid|where    key each output by the worker's pid, or by where it runs:
                     $FLOWD_TEST@<working directory name>@$FLOWD_WORKER
  --hold-while PATH  answer nothing while the file PATH exists (10 minutes at most);
                     $VARIABLES in PATH are expanded (each peer's worker its own file)
"""
import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
for flag in ["crash-every", "hang-every", "garbage-every", "unknown-every", "huge-every", "torn-every"]:
    parser.add_argument("--" + flag, type=int, default=0)
parser.add_argument("--refuse", type=int, action="append", default=[])
parser.add_argument("--key", choices=["pid", "where"])
parser.add_argument("--hold-while")
args = parser.parse_args()


def every(n, count):
    return n > 0 and count % n == 0


out = sys.stdout
answered = 0
for line in sys.stdin:
    request = json.loads(line)
    held_until = time.monotonic() + 600
    while args.hold_while and os.path.exists(os.path.expandvars(args.hold_while)) and time.monotonic() < held_until:
        time.sleep(0.02)
    if every(args.crash_every, answered) and answered > 0:
        os._exit(1)
    if every(args.hang_every, answered) and answered > 0:
        time.sleep(3600)
    answered += 1
    value = request["value"]
    if value in args.refuse:
        answer = {"id": request["id"], "error": f"unlucky number {value}"}
    else:
        answer = {"id": request["id"], "values": [value * 2]}
    if args.key == "pid":
        answer = {"id": request["id"], "records": [{"key": str(os.getpid()), "value": value * 2}]}
    elif args.key == "where":
        where = "@".join([os.environ.get("FLOWD_TEST", ""), os.path.basename(os.getcwd()), os.environ["FLOWD_WORKER"]])
        answer = {"id": request["id"], "records": [{"key": where, "value": value * 2}]}
    text = json.dumps(answer)
    if every(args.garbage_every, answered):
        text = "Traceback (most recent call last): oops"
    elif every(args.unknown_every, answered):
        text = json.dumps({"id": 10**12 + answered, "values": [0]})
    elif every(args.huge_every, answered):
        text = json.dumps({"id": request["id"], "values": ["x" * 4096]})
    elif every(args.torn_every, answered):
        out.write(text[: len(text) // 2])
        out.flush()
        os._exit(2)
    out.write(text + "\n")
    out.flush()
