// A Socket.IO 4 node for tether's end-to-end tests and demo.
//
// Environment: NODE_NAME (reported to clients), PORT (default 3000),
// TRANSPORTS (default "polling,websocket").
// GET /stats answers with this node's counters as JSON, among them
// sessionUnknown: requests that named a session this node does not hold,
// which Engine.IO answers with HTTP 400 "Session ID unknown".
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const nodeName = process.env.NODE_NAME || "node";
const port = Number(process.env.PORT || 3000);
const transports = (process.env.TRANSPORTS || "polling,websocket").split(",");

const stats = { node: nodeName, connections: 0, handshakes: 0, sessionUnknown: 0, otherErrors: 0, echoes: 0 };

const server = http.createServer((req, res) => {
  if (req.url === "/stats") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ...stats, open: io.of("/").sockets.size, engineSessions: io.engine.clientsCount }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(server, { transports, pingInterval: 25000, pingTimeout: 20000 });

io.engine.on("connection", () => {
  stats.handshakes++;
});

io.engine.on("connection_error", (err) => {
  // Engine.IO error code 1 is "Session ID unknown".
  if (err.code === 1) {
    stats.sessionUnknown++;
  } else {
    stats.otherErrors++;
  }
});

io.on("connection", (socket) => {
  stats.connections++;
  socket.emit("hello", nodeName);
  socket.on("echo", (data, ack) => {
    stats.echoes++;
    if (typeof ack === "function") {
      ack({ node: nodeName, data });
    }
  });
});

server.listen(port, "::", () => {
  console.log(JSON.stringify({ listening: port, node: nodeName, transports }));
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
