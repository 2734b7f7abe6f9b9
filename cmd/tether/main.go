// Command tether is the tether load balancer's daemon and CLI.
package main

import (
	"fmt"
	"os"

	"github.com/tether-lb/tether/userspace/cli"
)

func main() {
	if err := cli.Run(cli.App(os.Stdout, os.Stderr), os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "tether: %v\n", err)
		os.Exit(1)
	}
}
