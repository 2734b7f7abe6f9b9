// Package cli builds the tether command-line application. App takes its
// writers as arguments so tests can run every command in-process.
package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tether-lb/tether/userspace/control"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

const socketFlag = "socket"

// App returns the tether application writing to stdout and stderr.
func App(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "tether",
		Usage:     "sticky layer-4 load balancer in XDP for Socket.IO clusters",
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, by main, which exits non-zero.
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: socketFlag, Value: control.DefaultSocket, Usage: "the daemon's control socket", EnvVars: []string{"TETHER_SOCKET"}},
		},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(c.App.ErrWriter, "tether: unknown command %q, see tether --help\n", name)
		},
		Commands: []*cli.Command{
			runCommand(),
			vipCommand(),
			backendCommand(),
			statusCommand(),
			detachCommand(),
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

// Run runs the application on args (os.Args). Flags may follow positional
// arguments, as in `tether backend add --vip V NAME ADDR --weight 2`.
func Run(app *cli.App, args []string) error {
	return app.Run(interspersed(app, args))
}

// interspersed moves a leaf command's flags ahead of its positional
// arguments, which urfave/cli stops parsing flags at.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	commands := app.Commands
	var leaf *cli.Command
	for len(rest) > 0 {
		if strings.HasPrefix(rest[0], "-") {
			if leaf != nil {
				break
			}
			// An app-level flag (--socket PATH) before the command.
			out = append(out, rest[0])
			if !strings.Contains(rest[0], "=") && len(rest) > 1 && !isBoolFlag(app.Flags, rest[0]) {
				out = append(out, rest[1])
				rest = rest[1:]
			}
			rest = rest[1:]
			continue
		}
		var next *cli.Command
		for _, c := range commands {
			if c.HasName(rest[0]) {
				next = c
			}
		}
		if next == nil {
			break
		}
		out = append(out, rest[0])
		rest = rest[1:]
		leaf, commands = next, next.Subcommands
		if len(commands) == 0 {
			break
		}
	}
	if leaf == nil || len(leaf.Subcommands) > 0 {
		return append(out, rest...)
	}
	var flags, positional []string
	for i := 0; i < len(rest); i++ {
		arg := rest[i]
		switch {
		case arg == "--":
			positional = append(positional, rest[i:]...)
			i = len(rest)
		case strings.HasPrefix(arg, "-") && len(arg) > 1:
			flags = append(flags, arg)
			if !strings.Contains(arg, "=") && !isBoolFlag(leaf.Flags, arg) && i+1 < len(rest) {
				flags = append(flags, rest[i+1])
				i++
			}
		default:
			positional = append(positional, arg)
		}
	}
	out = append(out, flags...)
	return append(out, positional...)
}

func isBoolFlag(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				_, ok := f.(*cli.BoolFlag)
				return ok
			}
		}
	}
	return name == "help" || name == "h"
}

func client(c *cli.Context) *control.Client {
	return control.NewClient(c.String(socketFlag))
}

// args checks a command's positional arguments.
func args(c *cli.Context, names ...string) ([]string, error) {
	if c.NArg() != len(names) {
		return nil, fmt.Errorf("%s takes %s, got %d argument(s): %q (see --help)",
			c.Command.FullName(), strings.Join(names, " "), c.NArg(), c.Args().Slice())
	}
	return c.Args().Slice(), nil
}
