// One boot of the virtual sensor node: real MicroPython (WebAssembly port) under Node.js,
// its console bridged to the pty master that hil/virtual_node/__init__.py hands over as fd 3.
//
// Why this shape: the WebAssembly interpreter runs on the JS thread, so while Python code runs
// (main.py's endless loop) no JS event can fire. Everything the board needs while code runs is
// therefore done synchronously from inside the interpreter's own calls into JS: reading stdin,
// poll() on stdin, ticks_ms (called by every sleep's busy-wait) and the fake peripherals all
// "pump" the pty (non-blocking read), flush pending output and deliver Ctrl-C as a
// KeyboardInterrupt, as the USB CDC driver of a real Pico does. While the REPL is idle a timer
// pumps instead and feeds each byte to the event-driven REPL.
//
// A reset (soft: Ctrl-D at the REPL; hard: machine.reset(), the watchdog, or the harness) ends this
// process with a code the harness reads; the harness starts a fresh one on the same pty, so every
// boot gets a clean interpreter and no heap leaks from one boot into the next.
//
// Receive side: a Pico's USB CDC does not buffer without limit. TinyUSB's CDC RX FIFO (256 bytes at
// full speed) feeds MicroPython's stdin ring buffer (512 bytes, holding 511); when both are full the
// device NAKs the host's OUT transfers, the host driver's queue fills and the writer blocks. The
// bridge models that: it takes bytes off the pty only while its FIFO (RX_FIFO bytes) has room, so
// the pty's own buffer fills and the host's write() blocks (EAGAIN when non-blocking) until the
// firmware reads. Ctrl-C is seen when a byte enters the FIFO, as the rp2 port sees it when moving
// bytes into its ring: a Ctrl-C queued behind a full FIFO waits for the firmware to read.
//
// Files: the node filesystem is MEMFS seeded from the host folder at boot and written through to
// it on every close/unlink/rename/mkdir/rmdir, so the host folder is the flash and survives resets.

import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const EXIT_SOFT_RESET = 80;      // Ctrl-D at the friendly REPL: reboot, run main.py
const EXIT_HARD_RESET = 81;      // machine.reset() / watchdog: reboot, run main.py
const EXIT_SOFT_RESET_RAW = 82;  // Ctrl-D in the raw REPL: reboot into the raw REPL, main.py not run
const EXIT_WATCHDOG = 83;        // the watchdog was not fed in time: reboot, run main.py

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.split(/=(.*)/s).slice(0, 2)));
const fsRoot = path.resolve(args.fs);           // host folder = the node's flash
const stateDir = path.resolve(args.state);      // peripherals.json in, outputs.json out, carry
const libDir = path.resolve(args.lib);          // harness MicroPython modules (fake machine ...)
const rawMode = args.mode === "raw";            // boot straight into the raw REPL (after a soft reset in raw mode)
const resetCause = args.cause || "power_on";
const PTY_FD = Number(args.pty_fd);             // the pty master, inherited from the harness
const VNODE_DIR = "/.vnode";                    // where harness modules live inside the node, never synced
const SPECIAL = new Set(["tmp", "home", "dev", "proc", VNODE_DIR.slice(1)]);

// ---------- console: pty <-> interpreter ----------

const RX_FIFO = 256 + 511;        // TinyUSB CDC RX FIFO + the rp2 port's stdin ring buffer
let input = [];                   // bytes read from the pty, not yet consumed (at most RX_FIFO)
const carryFile = path.join(stateDir, "carry.bin");
if (fs.existsSync(carryFile)) {   // bytes the previous boot had read but not consumed
    input.push(...fs.readFileSync(carryFile));
    fs.rmSync(carryFile);
}
let output = [];
let running = false;              // Python code runs (not idle at the REPL)
let replRaw = rawMode;            // which REPL a soft reset must come back to
let mp = null;
let droppedOut = 0;
const readBuf = Buffer.alloc(4096);

// Transmit side, as the rp2 port's mp_usbd_cdc_tx_strn: while a host holds the port open (DTR) and does
// not read, a write waits up to TX_TIMEOUT_MS for room and then drops what is left; with no host it drops at
// once. A pty has no DTR: a host holds the port when some process other than the harness (which keeps one
// descriptor of the slave open itself) has the slave open, found in /proc, looked up only when the buffer is
// full and at most every HOST_CHECK_MS.
const TX_TIMEOUT_MS = 500;        // MICROPY_HW_USB_CDC_TX_TIMEOUT
const HOST_CHECK_MS = 200;
const PTY_PATH = args.pty || "";
const txSleeper = new Int32Array(new SharedArrayBuffer(4));
let hostCheckedAt = -Infinity;
let hostHolds = false;
let txWaitMs = 0;                 // time spent waiting for the host since the last stall check
const txTimeoutLog = path.join(stateDir, "txtimeouts.log");   // one line per write that waited and was dropped

function hostHoldsPort() {
    const now = performance.now();
    if (now - hostCheckedAt < HOST_CHECK_MS) return hostHolds;
    let opened = 0;
    for (const pid of fs.readdirSync("/proc")) {
        if (!/^[0-9]+$/.test(pid)) continue;
        let fds;
        try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; }   // gone, or not ours to see
        for (const fd of fds) {
            try { if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === PTY_PATH) opened++; } catch { /* closed */ }
        }
    }
    hostHolds = opened > 1;
    hostCheckedAt = performance.now();
    return hostHolds;
}

function flushOut() {
    let waitStart = -1;
    while (output.length) {
        const chunk = Buffer.from(output);
        let n = 0;
        try {
            n = fs.writeSync(PTY_FD, chunk);
            if (n > 0) waitStart = -1;
        } catch (e) {
            if (e.code === "EAGAIN" && PTY_PATH && (waitStart < 0 || performance.now() - waitStart < TX_TIMEOUT_MS)
                    && hostHoldsPort()) {   // a host holds the port but does not read: wait, as a Pico does
                if (waitStart < 0) waitStart = performance.now();
                const t = performance.now();
                Atomics.wait(txSleeper, 0, 0, 1);
                txWaitMs += performance.now() - t;   // the firmware's own wait, not a stall of the machine
                continue;
            } else if (e.code === "EAGAIN") {  // no host, or it did not read for TX_TIMEOUT_MS: dropped
                if (waitStart >= 0) fs.appendFileSync(txTimeoutLog, `${args.boot || 0} ${Math.round(nodeTicks())}\n`);
                waitStart = -1;
                droppedOut += chunk.length;
                n = chunk.length;
            } else if (e.code === "EIO") {
                n = chunk.length;
            } else {
                throw e;
            }
        }
        output = output.slice(n);
    }
}

const parentPid = Number(args.parent) || process.ppid;   // the harness: if it dies without closing us, so do we

function pump() {
    if (process.ppid !== parentPid) process.exit(0);
    flushOut();
    for (;;) {
        const room = Math.min(readBuf.length, RX_FIFO - input.length);
        if (room <= 0) return;    // FIFO full: the rest stays in the pty, the host's writes block
        let n = 0;
        try {
            n = fs.readSync(PTY_FD, readBuf, 0, room, null);
        } catch (e) {
            if (e.code === "EAGAIN" || e.code === "EIO") return;
            throw e;
        }
        if (n <= 0) return;
        for (let i = 0; i < n; i++) {
            const c = readBuf[i];
            if (running && mp && c === mp._module._mp_hal_get_interrupt_char()) {
                mp._module._mp_sched_keyboard_interrupt();  // like the Pico's CDC: the byte is consumed
            } else {
                input.push(c);
            }
        }
    }
}

function stdinChar() {            // Emscripten device read: a byte, or undefined for EAGAIN
    if (!input.length) pump();
    if (!input.length) return undefined;
    lastConsumed = performance.now();
    return input.shift();
}

// ---------- time: keep busy-waits from burning a core ----------

const pinLog = path.join(stateDir, "pins.log");
const stallLog = path.join(stateDir, "stalls.log");
const sleeper = new Int32Array(new SharedArrayBuffer(4));
let lastTicksCall = 0;
let lastPump = 0;
let lastConsumed = -Infinity;     // when the firmware last took a byte from the console
let hook = () => {};              // watchdog check, set below
let nodeTicks = () => 0;          // the interpreter's own ticks_ms, without the pump (set at instantiation)

// Time the interpreter's process was not running at all (descheduled by a busy host machine) is time
// a Pico never loses. It is logged, so a test that times the firmware on the node's clock can tell the
// firmware's own delay from the machine's: wall time between two clock checks less the CPU time used.
const STALL_MS = 20;
let lastCpu = 0;

function noteStall(wallMs) {
    const cpu = process.cpuUsage();
    const cpuMs = (cpu.user + cpu.system) / 1000;
    const lost = wallMs - (cpuMs - lastCpu) - txWaitMs;
    if (wallMs > STALL_MS && lost > STALL_MS) {
        fs.appendFileSync(stallLog, `${args.boot || 0} ${Math.round(nodeTicks())} ${Math.round(lost)}\n`);
    }
    lastCpu = cpuMs;
    txWaitMs = 0;
}

function patchedTicks(orig) {
    return () => {
        const now = performance.now();
        // A tight loop of ticks calls is a sleep's busy-wait: slow it down so it does not burn a core.
        // Not while the firmware is reading the console: poll() reads the clock several times per call,
        // and a Pico polls its stdin in microseconds, so throttling then would make the node read far
        // slower than a board does.
        if (now - lastTicksCall < 0.2 && now - lastConsumed > 1) Atomics.wait(sleeper, 0, 0, 0.3);
        lastTicksCall = performance.now();
        if (lastTicksCall - lastPump > 1) {
            noteStall(lastTicksCall - lastPump);
            lastPump = lastTicksCall;
            pump();
            hook();
        }
        return orig();
    };
}

// This port's VfsPosix raises OSError with Emscripten's (WASI) errno numbers, while MicroPython's
// errno module and every tool (mpremote, the firmware) use the usual ones: ENOENT is 2, not 44.
// Translating at the syscall boundary makes a missing file ENOENT and a quiet stdin EAGAIN (which
// the stream layer then turns into "no data" as on a board).
const WASI_TO_POSIX = {
    2: 13, 6: 11, 8: 9, 10: 16, 20: 17, 27: 4, 28: 22, 29: 5, 31: 21, 33: 24, 37: 36, 43: 19, 44: 2,
    48: 12, 51: 28, 52: 38, 54: 20, 55: 39, 63: 1, 69: 30, 70: 29, 73: 110, 75: 18,
};
const posixErrno = (e) => WASI_TO_POSIX[e] ?? e;

// Wrap imports of the wasm module before the loader instantiates it.
const origInstantiate = WebAssembly.instantiate;
WebAssembly.instantiate = function (source, imports) {
    if (imports?.env?.mp_js_ticks_ms) {
        for (const [name, fn] of Object.entries(imports.env)) {
            if (name.startsWith("__syscall_")) {
                imports.env[name] = (...a) => { const r = fn(...a); return r < 0 ? -posixErrno(-r) : r; };
            }
        }
        for (const name of ["fd_read", "fd_close", "fd_seek", "fd_sync"]) {
            const fn = imports.wasi_snapshot_preview1[name];
            imports.wasi_snapshot_preview1[name] = (...a) => posixErrno(fn(...a));
        }
        nodeTicks = imports.env.mp_js_ticks_ms;
        imports.env.mp_js_ticks_ms = patchedTicks(imports.env.mp_js_ticks_ms);
        const fdWrite = imports.wasi_snapshot_preview1.fd_write;
        imports.wasi_snapshot_preview1.fd_write = (...a) => {
            const r = posixErrno(fdWrite(...a));
            flushOut();
            return r;
        };
    }
    return origInstantiate.call(this, source, imports);
};

// ---------- filesystem: host folder <-> MEMFS ----------

function seed(FS, hostDir, nodeDir) {
    for (const ent of fs.readdirSync(hostDir, { withFileTypes: true })) {
        const h = path.join(hostDir, ent.name);
        const n = nodeDir === "/" ? "/" + ent.name : nodeDir + "/" + ent.name;
        if (nodeDir === "/" && SPECIAL.has(ent.name)) continue;
        if (ent.isDirectory()) {
            try { FS.mkdir(n); } catch { /* exists */ }
            seed(FS, h, n);
        } else if (ent.isFile()) {
            FS.writeFile(n, fs.readFileSync(h));
        }
    }
}

function hostPath(nodePath) {     // null for paths outside the synced flash
    const p = path.posix.normalize(nodePath);
    if (!p.startsWith("/")) return null;
    const top = p.split("/")[1];
    if (!top || SPECIAL.has(top)) return null;
    return path.join(fsRoot, p);
}

function writeThrough(FS) {
    const wrap = (name, fn) => {
        const orig = FS[name].bind(FS);
        FS[name] = (...a) => {
            const pre = fn.before ? fn.before(...a) : undefined;
            const r = orig(...a);
            fn(pre, ...a);
            return r;
        };
    };
    const closeFn = (pre, stream) => {
        if (!pre) return;
        const h = hostPath(pre);
        if (h) {
            fs.mkdirSync(path.dirname(h), { recursive: true });
            fs.writeFileSync(h, FS.readFile(pre));
        }
    };
    closeFn.before = (stream) => {
        const writable = (stream.flags & 3) !== 0;
        return writable && stream.node && FS.isFile(stream.node.mode) ? stream.path : null;
    };
    wrap("close", closeFn);
    wrap("unlink", (pre, p) => { const h = hostPath(FS.cwdPath(p)); if (h) fs.rmSync(h, { force: true }); });
    wrap("rmdir", (pre, p) => { const h = hostPath(FS.cwdPath(p)); if (h) fs.rmSync(h, { recursive: true, force: true }); });
    wrap("mkdir", (pre, p) => { const h = hostPath(FS.cwdPath(p)); if (h) fs.mkdirSync(h, { recursive: true }); });
    wrap("rename", (pre, a, b) => {
        const ha = hostPath(FS.cwdPath(a)), hb = hostPath(FS.cwdPath(b));
        if (ha && hb) fs.renameSync(ha, hb);
        else if (hb) fs.writeFileSync(hb, FS.readFile(FS.cwdPath(b)));
        else if (ha) fs.rmSync(ha, { force: true, recursive: true });
    });
}

// ---------- fake hardware, called from the harness's machine.py ----------

let peripheralsCache = { mtime: -1, text: "{}" };
const pins = {};
if (resetCause === "soft") {      // a soft reset restarts the interpreter; the GPIO block keeps driving
    try {
        Object.assign(pins, JSON.parse(fs.readFileSync(path.join(stateDir, "outputs.json"), "utf8")).pins);
    } catch { /* no earlier boot */ }
}
let wdt = null;                   // { timeoutMs, fedAt }


function writeOutputs() {
    const tmp = path.join(stateDir, "outputs.json.tmp");
    fs.writeFileSync(tmp, JSON.stringify({ pins, boot: Number(args.boot || 0) }));
    fs.renameSync(tmp, path.join(stateDir, "outputs.json"));
}

function leave(code) {
    flushOut();
    if (input.length) fs.writeFileSync(carryFile, Buffer.from(input));
    process.exit(code);
}

hook = () => {
    if (wdt && performance.now() - wdt.fedAt > wdt.timeoutMs) {
        leave(EXIT_WATCHDOG);
    }
};

const host = {
    peripherals() {
        pump();
        const file = path.join(stateDir, "peripherals.json");
        try {
            const st = fs.statSync(file, { bigint: true });
            if (st.mtimeNs !== peripheralsCache.mtime) {
                peripheralsCache = { mtime: st.mtimeNs, text: fs.readFileSync(file, "utf8") };
            }
        } catch { /* none yet: keep the last */ }
        return peripheralsCache.text;
    },
    pin_write(name, level) {
        const v = level ? 1 : 0;
        if (pins[name] !== v) {
            pins[name] = v;
            writeOutputs();
            // every change with the node's own ticks_ms, so a test can time the firmware in node time
            fs.appendFileSync(pinLog, `${args.boot || 0} ${nodeTicks()} ${name} ${v}\n`);
        }
        pump();
    },
    pin_release(name) {
        if (name in pins) {
            delete pins[name];
            writeOutputs();
        }
    },
    wdt_start(timeoutMs) { wdt = { timeoutMs, fedAt: performance.now() }; },
    wdt_feed() { if (wdt) wdt.fedAt = performance.now(); },
    hard_reset() { leave(EXIT_HARD_RESET); },
    soft_reset() { output.push(...Buffer.from("MPY: soft reboot\r\n")); leave(replRaw ? EXIT_SOFT_RESET_RAW : EXIT_SOFT_RESET); },
    unique_id() { return args.uid || "e66038b7130f2e2d"; },
    reset_cause() { return resetCause; },
};

// ---------- boot ----------

mp = await loadMicroPython({
    stdin: stdinChar,
    stdout: (b) => { output.push(b[0]); if (output.length >= 1024) flushOut(); },
    stderr: (b) => { output.push(b[0]); },
    linebuffer: false,
    heapsize: 200 * 1024,         // a Pico gives MicroPython about 190 kB of heap
});
const FS = mp.FS;
FS.cwdPath = (p) => (p.startsWith("/") ? p : path.posix.join(FS.cwd(), p));
FS.mkdir(VNODE_DIR);
for (const f of fs.readdirSync(libDir)) {
    if (f.endsWith(".py")) FS.writeFile(`${VNODE_DIR}/${f}`, fs.readFileSync(path.join(libDir, f)));
}
seed(FS, fsRoot, "/");
writeThrough(FS);
FS.getStream(0).stream_ops.poll = () => {         // stdin readable only when bytes are waiting
    if (!input.length) pump();
    return input.length ? 1 | 4 : 4;
};
mp.registerJsModule("_vnode_host", host);
mp.runPython(`import sys\nsys.path.append("${VNODE_DIR}")\n`);
writeOutputs();

function runFile(name) {          // as a Pico's main loop does for boot.py / main.py
    running = true;
    try {
        mp.runPython(`
import sys as _s, os as _o, micropython as _m
_m.kbd_intr(3)          # as pyexec_file on a Pico: Ctrl-C interrupts boot.py/main.py
try:
    _o.stat(${JSON.stringify(name)})
    _f = True
except OSError:
    _f = False
if _f:
    try:
        exec(compile(open(${JSON.stringify(name)}).read(), ${JSON.stringify(name)}, "exec"), {"__name__": "__main__"})
    except SystemExit:
        pass
    except BaseException as _e:
        _s.print_exception(_e)
_m.kbd_intr(-1)
del _s, _o, _f, _m
`);
    } catch (e) {
        output.push(...Buffer.from(String(e.message) + "\r\n"));
    } finally {
        running = false;
        flushOut();
    }
}

runFile("boot.py");
if (!rawMode) runFile("main.py");
mp.replInit();                    // the friendly banner
if (rawMode) {                    // a real board keeps its REPL mode across a soft reset
    output = [];
    mp.replProcessChar(0x01);
}
flushOut();

// ---------- idle REPL loop ----------

const PROBE = [0x05, 0x41, 0x01]; // mpremote's raw-paste probe: Ctrl-E 'A' Ctrl-A
let probeWait = 0;

function feed() {
    pump();
    while (input.length) {
        // Raw-paste hangs in the event-driven REPL of this port: answer "understood, not supported"
        // so mpremote falls back to plain raw mode.
        if (input[0] === PROBE[0]) {
            if (input.length < 3 && probeWait++ < 20) break;      // wait up to ~40 ms for the rest
            probeWait = 0;
            if (input[1] === PROBE[1] && input[2] === PROBE[2]) {
                input.splice(0, 3);
                output.push(0x52, 0x00);
                flushOut();
                continue;
            }
        }
        const c = input.shift();
        if (c === 0x01) replRaw = true;
        else if (c === 0x02) replRaw = false;
        running = true;
        let rc;
        try {
            rc = mp.replProcessChar(c);
        } finally {
            running = false;
        }
        flushOut();
        if (rc !== 0) {
            output.push(...Buffer.from("MPY: soft reboot\r\n"));
            leave(replRaw ? EXIT_SOFT_RESET_RAW : EXIT_SOFT_RESET);
        }
    }
    setTimeout(feed, 2);
}
setTimeout(feed, 0);
