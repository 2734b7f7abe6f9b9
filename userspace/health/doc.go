// Package health decides whether backends are usable.
//
// It has three layers, each usable on its own:
//
//   - Check describes how to probe a backend (tcp connect, http request,
//     Engine.IO polling handshake, or none) and how often; Probe makes one
//     attempt, and IsHard tells a failure that proves the node gone (the
//     handshake refused, no route) from one that says it is slow or unwell.
//   - Tracker turns a stream of probe outcomes into up, unhealthy (soft
//     failures, with rise/fall hysteresis) or down (hard evidence, at once).
//   - Scheduler probes many targets on their intervals from one timer loop
//     and a bounded pool of workers, confirms hard failures with a second
//     probe, discards timeouts that the LB's own stalls explain, and reports
//     every result and every state change through a callback.
package health
