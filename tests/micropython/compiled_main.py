# Runs a test script (/test/main.py) on MicroPython with the firmware compiled
# to .mpy (under /mpy) first on the import path, where run.mjs's sources come
# later: crev, dgc and umqtt then load as bytecode, as on a provisioned board.
# Its last line names the file every firmware module was loaded from.
import json
import sys

sys.path.insert(0, "/mpy")
with open("/test/main.py") as f:
    source = f.read()
exec(source, {"__name__": "__main__"})

loaded = {}
for name, module in sys.modules.items():
    if name.split(".")[0] in ("crev", "dgc", "umqtt"):
        loaded[name] = getattr(module, "__file__", None)
print(json.dumps({"loaded": loaded}))
