// Package cli builds the tether command-line application. App takes its
// writers as arguments so tests can run every command in-process.
package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// App returns the tether application writing to stdout and stderr.
func App(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "tether",
		Usage:     "sticky layer-4 load balancer in XDP for Socket.IO clusters",
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, by main, and exit non-zero there.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintf(c.App.Writer, "tether %s\n", Version)
					return err
				},
			},
		},
	}
}
