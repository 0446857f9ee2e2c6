// A bare MicroPython (the same WebAssembly build as the virtual node) that runs snippets on request:
// one JSON line in ({"code": "..."}), one JSON line out ({"out": "...", "error": null | "Type: message"}).
// Tests use it to push many inputs through firmware modules (fuzzing, cross-checks) without a REPL.
// argv[2], when given, is a host folder whose *.py files are copied into the interpreter's cwd.

import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

let out = [];
const mp = await loadMicroPython({ stdout: (b) => out.push(b[0]), stderr: (b) => out.push(b[0]), linebuffer: false,
                                   heapsize: 4 * 1024 * 1024 });
const dir = process.argv[2];
if (dir) {
    for (const f of fs.readdirSync(dir)) {
        if (f.endsWith(".py") || f.endsWith(".mpy")) mp.FS.writeFile("/" + f, fs.readFileSync(path.join(dir, f)));
    }
}
mp.runPython("import sys\nsys.path.insert(0, '/')\n");
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
    let error = null;
    out = [];
    try {
        mp.runPython(JSON.parse(line).code);
    } catch (e) {
        error = e.name === "PythonError" ? `${e.type}: ${e.message}` : `${e.name}: ${e.message}`;
    }
    process.stdout.write(JSON.stringify({ out: Buffer.from(out).toString("latin1"), error }) + "\n");
}
