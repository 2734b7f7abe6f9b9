// Package health decides whether backends are usable.
//
// It has three layers, each usable on its own:
//
//   - Check describes how to probe a backend (tcp connect, http request,
//     Engine.IO polling handshake, or none) and how often; Probe makes one
//     attempt.
//   - Tracker turns a stream of probe outcomes into an up/down state with
//     rise/fall hysteresis, so a single lost probe does not move clients.
//   - Scheduler probes many targets on their intervals from one timer loop
//     and a bounded pool of workers, and reports every result and every
//     state change through a callback.
package health
