package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/urfave/cli/v2"
)

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:  "detach",
		Usage: "remove the XDP program, its link and all pins from an interface (stop the daemon first)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Required: true, Usage: "interface tether is attached to"},
			&cli.StringFlag{Name: "bpffs", Value: loader.DefaultBPFFS, Usage: "bpffs mount point of the pins"},
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			// Any daemon that accepts a connection is running, even one that
			// would refuse this caller or is too busy to answer.
			if conn, err := net.DialTimeout("unix", c.String(socketFlag), time.Second); err == nil {
				conn.Close()
				return errors.New("the tether daemon is running: stop it first (SIGTERM), then detach")
			}
			dir := loader.PinDir(c.String("bpffs"), c.String("iface"))
			// A daemon on another socket still holds its pins' lock.
			if _, err := os.Stat(dir); err == nil {
				release, err := loader.LockPinDir(dir)
				if errors.Is(err, loader.ErrPinsInUse) {
					return fmt.Errorf("a tether daemon holds %s: stop it first (SIGTERM), then detach", dir)
				}
				if err != nil {
					return err
				}
				defer release()
			}
			if err := loader.Detach(dir); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "detached tether from %s and removed %s\n", c.String("iface"), dir)
			return nil
		},
	}
}
