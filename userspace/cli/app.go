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
	out, rest, leaf := splitCommand(app, args)
	if leaf == nil || len(leaf.Subcommands) > 0 {
		return append(out, rest...)
	}
	return append(out, flagsFirst(leaf.Flags, rest)...)
}

// splitCommand splits args into the program name, app-level flags and
// command names up to the first leaf command (head), and what follows
// (rest). leaf is the last command named, nil if none.
func splitCommand(app *cli.App, args []string) (head, rest []string, leaf *cli.Command) {
	head = []string{args[0]}
	rest = args[1:]
	commands := app.Commands
	for len(rest) > 0 {
		if strings.HasPrefix(rest[0], "-") {
			if leaf != nil {
				break
			}
			// An app-level flag (--socket PATH) before the command.
			n := flagLen(app.Flags, rest)
			head = append(head, rest[:n]...)
			rest = rest[n:]
			continue
		}
		next := findCommand(commands, rest[0])
		if next == nil {
			break
		}
		head = append(head, rest[0])
		rest = rest[1:]
		leaf, commands = next, next.Subcommands
		if len(commands) == 0 {
			break
		}
	}
	return head, rest, leaf
}

// findCommand returns the command of commands called name, nil if none.
func findCommand(commands []*cli.Command, name string) *cli.Command {
	for _, c := range commands {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// flagsFirst returns a leaf command's arguments with its flags, and their
// values, ahead of the positional arguments. All from "--" on is
// positional.
func flagsFirst(flags []cli.Flag, args []string) []string {
	var front, positional []string
	for i := 0; i < len(args); {
		arg := args[i]
		switch {
		case arg == "--":
			positional = append(positional, args[i:]...)
			i = len(args)
		case arg == "--help" || arg == "-h":
			// Help ignores the other arguments; urfave/cli would take the
			// first positional one for a help topic.
			return []string{arg}
		case strings.HasPrefix(arg, "-") && len(arg) > 1:
			n := flagLen(flags, args[i:])
			front = append(front, args[i:i+n]...)
			i += n
		default:
			positional = append(positional, arg)
			i++
		}
	}
	return append(front, positional...)
}

// flagLen returns how many of args the flag args[0] spans: 2 if it takes
// the value that follows it, 1 if it is a bool flag, has its value after
// "=" or is last.
func flagLen(flags []cli.Flag, args []string) int {
	if !strings.Contains(args[0], "=") && len(args) > 1 && !isBoolFlag(flags, args[0]) {
		return 2
	}
	return 1
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
