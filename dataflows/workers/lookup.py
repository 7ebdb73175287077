"""A lookup stage as an exec worker (JSON lines): adds the label of each request's number
from a table, and notes its step. dataflows/chained.toml runs it between two jq stages."""
import json
import sys

LABELS = ["fizz", "buzz", "bang"]

for line in sys.stdin:
    request = json.loads(line)
    job = request["value"]
    if not isinstance(job, dict) or not isinstance(job.get("n"), int):
        answer = {"id": request["id"], "error": "a request is {\"n\": INTEGER}"}
    else:
        job["label"] = LABELS[job["n"] % len(LABELS)]
        job["steps"] = job.get("steps", []) + ["lookup"]
        answer = {"id": request["id"], "values": [job]}
    sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
    sys.stdout.flush()
