// Package cli builds the tether command-line application. App takes its
// writers as arguments so tests can run every command in-process.
package cli

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tether-lb/tether/userspace/control"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

const socketFlag = "socket"

// App returns the tether application writing to stdout and stderr.
func App(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "tether",
		Usage:     "sticky layer-4 load balancer in XDP for Socket.IO clusters",
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, by main, which exits non-zero.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   usageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return unknownCommand(c)
			}
			return cli.ShowAppHelp(c)
		},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: socketFlag, Value: control.DefaultSocket, Usage: "the daemon's control socket", EnvVars: []string{"TETHER_SOCKET"}},
		},
		Commands: []*cli.Command{
			runCommand(),
			vipCommand(),
			backendCommand(),
			statusCommand(),
			statsCommand(),
			detachCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					if _, err := args(c); err != nil {
						return err
					}
					_, err := fmt.Fprintf(c.App.Writer, "tether %s\n", Version)
					return err
				},
			},
		},
	}
	for _, c := range app.Commands {
		configure(c)
	}
	return app
}

// configure gives c and its subcommands one-line flag errors. A command
// with subcommands rejects an unknown one; a leaf command gets no "help"
// subcommand, so that "help" stays usable as a backend name.
func configure(c *cli.Command) {
	c.OnUsageError = usageError
	if len(c.Subcommands) == 0 {
		c.HideHelpCommand = true
		return
	}
	c.Action = func(c *cli.Context) error {
		if c.Args().Present() {
			return unknownCommand(c)
		}
		return cli.ShowSubcommandHelp(c)
	}
	for _, sub := range c.Subcommands {
		configure(sub)
	}
}

func unknownCommand(c *cli.Context) error {
	return fmt.Errorf("unknown command %q, see %s --help", c.Args().First(), c.Command.HelpName)
}

// invalidFlagValue matches the flag package's error for a value that does
// not parse.
var invalidFlagValue = regexp.MustCompile(`^invalid value "(.*)" for flag -([\w-]+): `)

// usageError turns a flag parsing error into one line naming the flag, the
// bad value and what the flag takes; urfave/cli would print the whole help.
func usageError(c *cli.Context, err error, _ bool) error {
	m := invalidFlagValue.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("%w (see %s --help)", err, c.Command.HelpName)
	}
	value, name := m[1], m[2]
	for _, f := range c.Command.Flags {
		if !slices.Contains(f.Names(), name) {
			continue
		}
		usage := ""
		if u, ok := f.(cli.DocGenerationFlag); ok {
			usage = "; usage: " + u.GetUsage()
		}
		return fmt.Errorf("--%s %q is not valid, expected %s%s", name, value, flagTakes(f), usage)
	}
	return fmt.Errorf("--%s %q is not valid (see %s --help)", name, value, c.Command.HelpName)
}

// flagTakes says what kind of value f takes.
func flagTakes(f cli.Flag) string {
	switch f.(type) {
	case *cli.UintFlag:
		return "a whole number"
	case *cli.IntFlag:
		return "an integer"
	case *cli.DurationFlag:
		return "a duration such as 500ms, 2s or 1m30s"
	case *cli.BoolFlag:
		return "true or false"
	}
	return "a valid value"
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
		case arg == "--help" || arg == "-h":
			// Help ignores the other arguments; urfave/cli would take the
			// first positional one for a help topic.
			return append(out, arg)
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
		takes := strings.Join(names, " ")
		if len(names) == 0 {
			takes = "no arguments"
		}
		return nil, fmt.Errorf("%s takes %s, got %d argument(s): %q (see --help)",
			c.Command.HelpName, takes, c.NArg(), c.Args().Slice())
	}
	return c.Args().Slice(), nil
}
