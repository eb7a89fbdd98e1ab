# One run of the H200 device scripts (h200-train-bench.sh, h200-generate-bench.sh) as a line of a JSONL file:
# the run's fields, the date and commit, and its result (qlab's JSON document, or the peer's last output line),
# or its exit status and the end of its error output; a summary line on standard output.
#   python3 scripts/h200_record.py FILE SIDE EXIT LOG COMMIT [KEY=INT ...]
#   (LOG.json holds the run's standard output, LOG.err its error output)
import datetime
import json
import sys

file, side, status, log, commit, *fields = sys.argv[1:]
line = {"side": side, **{k: int(v) for k, v in (f.split("=", 1) for f in fields)}, "ok": status == "0",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit}
try:
    text = open(log + ".json").read().strip()
    # qlab prints one indented JSON document; the peer's result is its last line
    line["result"] = json.loads(text if side == "qlab" else text.splitlines()[-1])
except Exception:
    line["ok"] = False
if not line["ok"]:
    line["exit"] = int(status)
    line["error"] = open(log + ".err", errors="replace").read()[-600:]
with open(file, "a") as f:
    f.write(json.dumps(line) + "\n")
r = line.get("result", {})
print(side, *fields, "ok" if line["ok"] else "FAILED exit %s" % status,
      r.get("tokens_per_s", r.get("tok_s")), r.get("peak_allocated_gib", r.get("peak_gib")))
