// A MicroPython "board" on a TCP port, for tests of tools that talk to a
// board's serial REPL (mpremote, `crev provision`). The board is the official
// WebAssembly port; the TCP connection stands in for the USB serial cable
// (pyserial and mpremote open it as socket://127.0.0.1:PORT).
//
//   node serial_bridge.mjs [--prelude FILE.py] [--file /fs/path=host/path ...]
//
// It prints "listening PORT" once ready. The board keeps its filesystem and
// state across connections, as a powered board does. The prelude runs first,
// to install stand-ins for hardware the WebAssembly port lacks (a UART, a
// random number generator). One shim: this port's event-driven REPL does not
// answer the raw-paste probe (Ctrl-E A Ctrl-A), so the bridge answers
// "R\x00" (understood, not supported) and mpremote uses the plain raw REPL.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
let prelude = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--prelude") prelude = args[++i];
  else if (args[i] === "--file") files.push(args[++i].split("="));
}

let client = null;
const write = (bytes) => {
  // Output with no cable attached is lost, as on a board's UART.
  if (client && client.writable && !client.destroyed) client.write(Buffer.from(bytes));
};
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  linebuffer: false,
  stdout: (data) => write(typeof data === "number" ? [data] : data),
  stderr: (data) => write(typeof data === "number" ? [data] : data),
});
for (const [fsPath, hostPath] of files) {
  mp.FS.mkdirTree(path.posix.dirname(fsPath));
  mp.FS.writeFile(fsPath, fs.readFileSync(hostPath));
}
if (prelude) mp.runPython(fs.readFileSync(prelude, "utf8"));
mp.replInit();

const PROBE = [0x05, 0x41, 0x01];
const server = net.createServer((socket) => {
  if (client) client.destroy();
  client = socket;
  let held = [];
  socket.on("data", (chunk) => {
    for (const byte of chunk) {
      held.push(byte);
      const n = held.length;
      if (PROBE[n - 1] !== byte) {
        for (const b of held) mp.replProcessChar(b);
        held = [];
      } else if (n === PROBE.length) {
        held = [];
        write([0x52, 0x00]);
      }
    }
  });
  const detach = () => {
    if (client === socket) client = null;
  };
  socket.on("end", detach);
  socket.on("close", detach);
  socket.on("error", detach);
});
server.listen(0, "127.0.0.1", () => console.log("listening " + server.address().port));
