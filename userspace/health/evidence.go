package health

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// A failed probe is evidence of one of two kinds.
//
// Hard evidence says the node is gone: the TCP handshake was refused or
// reset, or the kernel could not resolve the node's neighbour entry (host
// unreachable, host down). A frozen, overloaded or garbage-collecting
// process still has its kernel complete the handshake, so none of these
// happens to a node that is merely slow.
//
// Everything else is soft: the handshake completed but the answer was late,
// cut off or wrong, or the handshake itself was not answered in time (a
// node whose accept queue is full drops SYNs as silently as a dead host;
// a dead host on the LB's segment soon fails neighbour resolution, which is
// hard evidence). "Network unreachable" and "network down" are soft too:
// they speak of the LB's own link and routes, and would otherwise take
// every node down at once.

// hardFailure marks a probe error as hard evidence.
type hardFailure struct{ err error }

func (h hardFailure) Error() string { return h.err.Error() }
func (h hardFailure) Unwrap() error { return h.err }

// IsHard reports whether err, a probe's error, is hard evidence that the
// node is gone.
func IsHard(err error) bool {
	var hard hardFailure
	return errors.As(err, &hard)
}

// goneErrnos are the connect errors that only a gone node causes.
var goneErrnos = []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EHOSTUNREACH, syscall.EHOSTDOWN}

// dialFailure classifies an error of establishing a probe's connection.
func dialFailure(err error) error {
	for _, errno := range goneErrnos {
		if errors.Is(err, errno) {
			return hardFailure{err}
		}
	}
	return err
}

// dial opens a probe's TCP connection, classifying its failure.
func dial(ctx context.Context, network, address string) (net.Conn, error) {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, network, address)
	if err != nil {
		return nil, dialFailure(err)
	}
	return conn, nil
}

// isTimeout reports whether a soft failure is a probe that ran out of
// time, the one kind of failure that a busy LB host can cause by itself.
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}
