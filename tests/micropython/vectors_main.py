# Runs the shared core vectors on MicroPython and prints one JSON line per case.
import json
import sys

sys.path.append("/vectors")
import runner

with open("/vectors/core_vectors.json") as f:
    doc = json.load(f)
for case_id, result in runner.run_all(doc, "pure"):
    print(json.dumps([case_id, result]))
