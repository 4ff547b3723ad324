// Runs a Python script on the official MicroPython WebAssembly port, with the
// portable core (firmware/crev) and the firmware application (firmware/dgc)
// on its import path.
//
//   node tests/micropython/run.mjs SCRIPT.py [--heap BYTES] [--fixed-heap [--collect-after BYTES]] [--steps]
//                                  [--file /fs/path=host/path ...]
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
//
// --fixed-heap: the heap stays the --heap bytes, as on a board. This port
// otherwise adds a heap area whenever an allocation does not fit (it cannot
// collect while Python runs, so it grows instead), and never raises
// MemoryError. Here, once the heap is set up, WebAssembly memory may not grow
// and every free byte of the C allocator is taken, save a small reserve for
// the calls into Python: an area the port tries to add is at least the size of
// the heap it has, so it can only fail, and Python sees MemoryError. Nothing
// is collected within a top-level call (a step) either way: the heap a step
// needs is the live heap it starts with plus all it allocates. The run fails
// (exit 3) if the heap nonetheless grew. A script should catch MemoryError
// itself: the port formats an uncaught one in the full heap, and can hang there.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
let script = null;
let heap = 1024 * 1024;
let steps = false;
let fixedHeap = false;
let collectAfter = 0;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") heap = parseInt(args[++i], 10);
  else if (args[i] === "--steps") steps = true;
  else if (args[i] === "--fixed-heap") fixedHeap = true;
  else if (args[i] === "--collect-after") collectAfter = parseInt(args[++i], 10);
  else if (args[i] === "--file") files.push(args[++i].split("="));
  else script = args[i];
}
if (!script) {
  console.error("usage: run.mjs SCRIPT.py [--heap BYTES] [--fixed-heap] [--steps] [--file /fs/path=host/path ...]");
  process.exit(2);
}

// Refused growth makes emscripten log a line each time; those lines are the expected
// outcome here, not an error of the script.
let memoryFixed = false;
const grow = WebAssembly.Memory.prototype.grow;
WebAssembly.Memory.prototype.grow = function (pages) {
  if (memoryFixed) throw new RangeError("run.mjs --fixed-heap: WebAssembly memory may not grow");
  return grow.call(this, pages);
};
const consoleError = console.error;
console.error = (...parts) => {
  if (memoryFixed && /^(growMemory:|Failed to grow the heap)/.test(String(parts[0]))) return;
  consoleError(...parts);
};

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

const source = fs.readFileSync(script, "utf8");

// The heap's size as MicroPython counts it: mem_free also counts the 128 MiB the
// port could still add, which stays the same, so a change in the sum is growth.
// Called through proxies, which allocate nothing on the Python heap (a heap that
// is full after a step must still be measurable).
const gc = mp.pyimport("gc");
const heapTotal = () => gc.mem_alloc() + gc.mem_free();

let heapAtStart = null;
if (fixedHeap) {
  heapAtStart = heapTotal();
  // The reserve: what the calls into Python malloc (the source text, a few 12-byte
  // values). Smaller than any heap area the port would add.
  const reserve = mp._module._malloc(Buffer.byteLength(source) + 16384);
  memoryFixed = true;
  for (let size = 1 << 30; size >= 8; ) {
    if (!mp._module._malloc(size)) size >>= 1;
  }
  mp._module._free(reserve);
}

try {
  mp.runPython(source);
  if (steps && fixedHeap) {
    // Called through proxies: nothing to compile per step, so a step's heap is the script's
    // own (and a long run is several times faster). Each call is a top-level one: the port
    // collects at its end what gc.collect() asked for.
    // --collect-after N: collect only once the steps since the last collection have
    // allocated N bytes (a pass that allocates nothing needs no collection), which makes
    // a long run faster; a step may then start with up to N bytes of garbage, so the
    // heap a run needs is overstated by at most N. The live heap after each collection
    // is reported as a JSON line at the end.
    const step = mp.globals.get("step");
    let kept = -1;
    let liveMax = 0;
    let collections = 0;
    for (let i = 0; i < mp.globals.get("STEPS"); i++) {
      if (kept < 0 || gc.mem_alloc() - kept >= collectAfter) {
        gc.collect();
        kept = gc.mem_alloc();
        liveMax = Math.max(liveMax, kept);
        collections++;
      }
      step(i);
    }
    console.log(JSON.stringify({ phase: "run.mjs", live_max: liveMax, collections: collections }));
  } else if (steps) {
    for (let i = 0; i < mp.globals.get("STEPS"); i++) {
      mp.runPython("import gc\ngc.collect()");
      mp.runPython("step(" + i + ")");
    }
  }
  if (fixedHeap && heapTotal() > heapAtStart + 1024) {
    process.stderr.write("run.mjs --fixed-heap: the heap grew from " + heapAtStart + " to " + heapTotal() + "\n");
    process.exit(3);
  }
} catch (err) {
  if (err.name !== "PythonError") throw err;
  process.stderr.write(err.message + "\n");
  process.exit(1);
}
