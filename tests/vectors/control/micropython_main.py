# Runs the site-control vectors on MicroPython and prints one JSON line per case.
import json
import sys

sys.path.append("/vectors")
import runner_control  # type: ignore[import-not-found]  # from /vectors, on MicroPython

with open("/vectors/commands.json") as f:
    doc = json.load(f)
for result in runner_control.run_all(doc, "pure"):
    print(json.dumps(result))
