// Runs a Python script on the official MicroPython WebAssembly port, with the
// portable core (firmware/crev) and the firmware application (firmware/dgc)
// on its import path.
//
//   node tests/micropython/run.mjs SCRIPT.py [--heap BYTES] [--steps] [--file /fs/path=host/path ...]
//
// The script's stdout goes to stdout. A Python exception prints its
// traceback on stderr and exits 1, so callers see exactly what failed.
//
// --steps: the script sets a global STEPS and defines step(i); then step(0)
// .. step(STEPS - 1) run here, each in a top-level call of its own, after a
// call that runs gc.collect(). This port's GC collects nothing while Python
// code runs (it cannot see the WebAssembly stack), only at the top level
// between calls, so this is how a script sees its live heap between steps.
// STEPS is read again after each step: a script ends early by lowering it.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
let script = null;
let heap = 1024 * 1024;
let steps = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") heap = parseInt(args[++i], 10);
  else if (args[i] === "--steps") steps = true;
  else if (args[i] === "--file") files.push(args[++i].split("="));
  else script = args[i];
}
if (!script) {
  console.error("usage: run.mjs SCRIPT.py [--heap BYTES] [--steps] [--file /fs/path=host/path ...]");
  process.exit(2);
}

const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});

function copyTree(hostDir, fsDir) {
  mp.FS.mkdirTree(fsDir);
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const host = path.join(hostDir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== "__pycache__") copyTree(host, fsDir + "/" + entry.name);
    } else if (entry.name.endsWith(".py")) {
      mp.FS.writeFile(fsDir + "/" + entry.name, fs.readFileSync(host));
    }
  }
}
copyTree(path.join(root, "firmware", "crev"), "/lib/crev");
copyTree(path.join(root, "firmware", "dgc"), "/lib/dgc");
// MicroPython libraries fetched by `make` (firmware/fetch_libs.py), e.g. umqtt.simple.
const libs = path.join(root, "firmware", "lib");
if (fs.existsSync(libs)) copyTree(libs, "/lib");
for (const [fsPath, hostPath] of files) {
  mp.FS.mkdirTree(path.posix.dirname(fsPath));
  mp.FS.writeFile(fsPath, fs.readFileSync(hostPath));
}

try {
  mp.runPython(fs.readFileSync(script, "utf8"));
  if (steps) {
    for (let i = 0; i < mp.globals.get("STEPS"); i++) {
      mp.runPython("import gc\ngc.collect()");
      mp.runPython("step(" + i + ")");
    }
  }
} catch (err) {
  if (err.name !== "PythonError") throw err;
  process.stderr.write(err.message + "\n");
  process.exit(1);
}
