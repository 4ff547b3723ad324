# Runs this folder's vectors on MicroPython and prints one JSON line per result.
import json
import sys

sys.path.append("/vectors")
import runner_echonet  # type: ignore[import-not-found]  # from /vectors, on MicroPython

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load(name: str) -> "Any":
    with open("/vectors/" + name) as f:
        return json.load(f)


for result in runner_echonet.run_all(_load("frames.json"), _load("smartmeter.json"), _load("skstack.json")):
    print(json.dumps(result))
