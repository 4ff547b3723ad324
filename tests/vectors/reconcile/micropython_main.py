# Runs this folder's vectors on MicroPython and prints one JSON line per result.
import json
import sys

sys.path.append("/vectors")
import runner_reconcile  # type: ignore[import-not-found]  # from /vectors, on MicroPython

with open("/vectors/reconcile.json") as f:
    doc = json.load(f)

for result in runner_reconcile.run_all(doc):
    print(json.dumps(result))
