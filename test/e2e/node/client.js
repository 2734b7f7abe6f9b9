// Socket.IO clients for tether's end-to-end tests and demo: many clients
// from many source addresses, each sending an acknowledged echo every
// 500 ms, reporting which node each client is on.
//
// Usage: node client.js --url URL --addrs A,B,... [--clients N]
//        [--duration SECONDS] [--transports polling|polling,websocket]
//
// Every second it prints one JSON line of totals; when the duration ends
// (or on SIGTERM/SIGINT) it prints a final line with "final": true and
// every client's history, then exits.
"use strict";

const http = require("http");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const out = { clients: 200, duration: 20, transports: "polling" };
  for (let i = 2; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in { url: 1, addrs: 1, clients: 1, duration: 1, transports: 1 })) {
      throw new Error(`unknown flag ${argv[i]} (expected --url, --addrs, --clients, --duration, --transports)`);
    }
    out[name] = argv[i + 1];
  }
  if (!out.url || !out.addrs) {
    throw new Error("--url and --addrs are required");
  }
  out.addrs = out.addrs.split(",");
  out.clients = Number(out.clients);
  out.duration = Number(out.duration);
  out.transports = out.transports.split(",");
  return out;
}

const args = parseArgs(process.argv);
const clients = [];

function start(index) {
  const addr = args.addrs[index % args.addrs.length];
  const c = { addr, nodes: [], acks: 0, ackTimeouts: 0, mismatches: 0, connectErrors: 0, disconnects: 0, reasons: [], connected: false };
  clients.push(c);
  // No keep-alive: every long-polling request opens a new TCP connection,
  // the case that breaks sessions without stickiness.
  const agent = new http.Agent({ keepAlive: false, localAddress: addr });
  const socket = io(args.url, {
    transports: args.transports,
    agent,
    localAddress: addr,
    forceNew: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 2000,
    timeout: 5000,
  });
  c.socket = socket;
  socket.on("hello", (node) => {
    if (c.nodes[c.nodes.length - 1] !== node) {
      c.nodes.push(node);
    }
  });
  socket.on("connect", () => { c.connected = true; });
  socket.on("connect_error", (err) => {
    c.connectErrors++;
    c.reasons.push(`connect_error: ${err.message}${err.description ? " " + err.description : ""}`);
  });
  socket.on("disconnect", (reason) => {
    c.connected = false;
    if (reason !== "io client disconnect") {
      c.disconnects++;
      c.reasons.push(`disconnect: ${reason}`);
    }
  });
  let seq = 0;
  c.timer = setInterval(() => {
    if (!socket.connected) {
      return;
    }
    seq++;
    socket.timeout(5000).emit("echo", seq, (err, reply) => {
      if (err) {
        c.ackTimeouts++;
        c.reasons.push("echo ack timeout");
        return;
      }
      c.acks++;
      if (reply.node !== c.nodes[c.nodes.length - 1]) {
        c.mismatches++;
      }
    });
  }, 500);
}

function totals() {
  const t = { clients: clients.length, connected: 0, acks: 0, ackTimeouts: 0, connectErrors: 0, disconnects: 0, mismatches: 0, moved: 0, perNode: {}, byAddr: {} };
  for (const c of clients) {
    t.connected += c.connected ? 1 : 0;
    t.acks += c.acks;
    t.ackTimeouts += c.ackTimeouts;
    t.connectErrors += c.connectErrors;
    t.disconnects += c.disconnects;
    t.mismatches += c.mismatches;
    t.moved += c.nodes.length > 1 ? 1 : 0;
    const node = c.nodes[c.nodes.length - 1];
    if (node) {
      t.perNode[node] = (t.perNode[node] || 0) + 1;
      const seen = t.byAddr[c.addr];
      t.byAddr[c.addr] = seen && seen !== node ? "split" : node;
    }
  }
  return t;
}

let finished = false;
function finish() {
  if (finished) {
    return;
  }
  finished = true;
  const final = totals();
  final.final = true;
  final.detail = clients.map((c) => ({ addr: c.addr, nodes: c.nodes, acks: c.acks, ackTimeouts: c.ackTimeouts, connectErrors: c.connectErrors, disconnects: c.disconnects, reasons: c.reasons.slice(0, 5) }));
  for (const c of clients) {
    clearInterval(c.timer);
    c.socket.close();
  }
  process.stdout.write(JSON.stringify(final) + "\n", () => process.exit(0));
}

for (let i = 0; i < args.clients; i++) {
  start(i);
}
const report = setInterval(() => console.log(JSON.stringify(totals())), 1000);
setTimeout(() => { clearInterval(report); finish(); }, args.duration * 1000);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => { clearInterval(report); finish(); });
}
