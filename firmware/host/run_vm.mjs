// Run the node firmware under the real MicroPython VM (WebAssembly port) on the host.
//
//   node firmware/host/run_vm.mjs job     < job.json   one script, results on stdout
//   node firmware/host/run_vm.mjs stream  < commands   the node's main loop on a driven clock
//
// Run it from the repository root so that node_modules resolves. Every firmware/*.py module is
// copied into the VM's /lib before anything runs, so scripts `import ct, node, hal_host` as the
// ESP32 does. job.json = {"script": "..." or ["...", ...], "files": {"/path": "text"}, "binfiles": {"/path": "hex"},
// "heapsize": bytes}.
// Stream mode: see firmware/README.md (frames out as hex lines, commands in as hex lines).
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const FIRMWARE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..");

async function loadVm(heapsize, onStdout) {
  let mod;
  try {
    mod = await import("@micropython/micropython-webassembly-pyscript/micropython.mjs");
  } catch (err) {
    process.stderr.write(
      "wattmesh: the MicroPython VM is missing (npm package " +
        "@micropython/micropython-webassembly-pyscript); run `npm install` at the repository root\n",
    );
    process.exit(3);
  }
  const mp = await mod.loadMicroPython({ heapsize, stdout: onStdout, linebuffer: true });
  mp.FS.mkdir("/lib");
  for (const name of readdirSync(FIRMWARE_DIR)) {
    if (name.endsWith(".py") && name !== "__init__.py") {
      mp.FS.writeFile("/lib/" + name, readFileSync(join(FIRMWARE_DIR, name)));
    }
  }
  mp.FS.mkdir("/flash");
  mp.runPython("import sys\nsys.path.append('/lib')\n");
  return mp;
}

function writeFile(mp, path, data) {
  let dir = "";
  for (const part of path.split("/").slice(1, -1)) {
    dir += "/" + part;
    try {
      mp.FS.mkdir(dir);
    } catch (err) {
      // exists already
    }
  }
  mp.FS.writeFile(path, data);
}

function readStdin() {
  return new Promise((resolve) => {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
  });
}

function pyError(err) {
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exit(1);
}

async function job() {
  const spec = JSON.parse(await readStdin());
  const mp = await loadVm(spec.heapsize || 1024 * 1024, (line) => process.stdout.write(line + "\n"));
  for (const [path, text] of Object.entries(spec.files || {})) {
    writeFile(mp, path, text);
  }
  for (const [path, hex] of Object.entries(spec.binfiles || {})) {
    writeFile(mp, path, Buffer.from(hex, "hex"));
  }
  // A list of scripts runs as separate calls: this VM frees garbage only between calls, so a
  // heap figure taken in a later call after gc.collect() is the live heap.
  const scripts = Array.isArray(spec.script) ? spec.script : [spec.script];
  for (const code of scripts) {
    try {
      mp.runPython(code);
    } catch (err) {
      pyError(err);
    }
  }
}

// Stream mode: the VM runs host_node.Host (firmware/host_node.py) on a simulated clock that
// advances --step-ms per tick; each tick's frames leave as hex lines on stdout, and hex lines on
// stdin are handed to the node as received commands. --speed S paces the ticks at S times wall
// time (--realtime = --speed 1); the default 0 runs as fast as the VM can, until stdin closes or
// --ticks N ticks have run.
async function stream(argv) {
  const opt = { config: null, profile: "{}", "step-ms": "1000", ticks: "0", speed: "0" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--realtime") opt.speed = "1";
    else if (a.startsWith("--") && i + 1 < argv.length) opt[a.slice(2)] = argv[++i];
    else pyError("unknown argument " + a);
  }
  if (!opt.config) pyError("--config FILE is required");
  const mp = await loadVm(1024 * 1024, (line) => process.stdout.write(line + "\n"));
  mp.FS.writeFile("/flash/config.json", readFileSync(opt.config));
  if (opt.key) mp.FS.writeFile("/flash/node.key", readFileSync(opt.key));
  const profile = opt.profile.startsWith("{") ? opt.profile : readFileSync(opt.profile, "utf8");
  mp.FS.writeFile("/flash/profile.json", profile);
  try {
    mp.runPython("import host_node\nH = host_node.Host('/flash')\n");
  } catch (err) {
    pyError(err);
  }
  const inbox = [];
  let closed = false;
  let reboot = false;
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (l) => {
    const hex = l.trim();
    if (hex === "reboot") reboot = true;
    else if (/^[0-9a-fA-F]*$/.test(hex) && hex.length % 2 === 0 && hex.length > 0) inbox.push(hex);
  });
  rl.on("close", () => {
    closed = true;
  });
  const step = parseInt(opt["step-ms"], 10);
  const ticks = parseInt(opt.ticks, 10);
  const speed = parseFloat(opt.speed);
  if (!(step >= 0) || !(ticks >= 0) || !(speed >= 0)) pyError("bad --step-ms, --ticks or --speed");
  for (let n = 0; ticks === 0 || n < ticks; n++) {
    const cmds = JSON.stringify(inbox.splice(0));
    try {
      if (reboot) {
        // a reset: the node starts again from what its flash holds (the clock runs on)
        reboot = false;
        mp.runPython("H = host_node.Host('/flash')\n");
      }
      mp.runPython(`H.tick(${step}, ${cmds})`);
    } catch (err) {
      pyError(err);
    }
    if (speed > 0) await new Promise((r) => setTimeout(r, step / speed));
    else await new Promise((r) => setImmediate(r));
    if (closed && ticks === 0) break;
  }
  process.exit(0);
}

const mode = process.argv[2];
if (mode === "job") await job();
else if (mode === "stream") await stream(process.argv.slice(3));
else pyError("usage: run_vm.mjs job|stream ...");
