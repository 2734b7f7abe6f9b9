// Command tether-bench is make bench: it measures tether against floors,
// nginx and no balancer in one run, writes a markdown results table to a
// file and prints it. It needs root (BPF, network namespaces).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/tether-lb/tether/test/bench"
)

func main() {
	if bench.IsHealthChild(os.Args[1:]) {
		if err := bench.RunHealthChild(os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tether-bench health child:", err)
			os.Exit(1)
		}
		return
	}
	out := flag.String("out", "bench-results.md", "results file (markdown)")
	tether := flag.String("tether", "bin/tether", "tether binary for the connection bench (make build)")
	quick := flag.Bool("quick", false, "small sizes: checks the benchmark works in about a minute, rough numbers")
	parts := flag.String("parts", strings.Join(bench.Parts, ","), "comma-separated parts to measure")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tether-bench needs root: it loads BPF programs and builds network namespaces")
		os.Exit(1)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "finding this program's path:", err)
		os.Exit(1)
	}
	cfg := bench.DefaultConfig()
	if *quick {
		cfg = bench.QuickConfig()
	}
	cfg.Conn.TetherBinary = *tether
	for _, part := range strings.Split(*parts, ",") {
		if !slices.Contains(bench.Parts, part) {
			fmt.Fprintf(os.Stderr, "unknown part %q in -parts, expected some of %s\n", part, strings.Join(bench.Parts, ","))
			os.Exit(2)
		}
		cfg.Parts = append(cfg.Parts, part)
	}
	cfg.Control.ChildExecutable = self

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results, runErr := bench.Run(ctx, cfg, os.Stderr)
	report := results.Markdown(strings.Join(append([]string{"tether-bench"}, os.Args[1:]...), " "))
	if ctx.Err() == nil {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "writing results:", err)
			os.Exit(1)
		}
		fmt.Print(report)
		fmt.Fprintf(os.Stderr, "results written to %s\n", *out)
	}
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "tether-bench:", runErr)
		os.Exit(1)
	}
	if len(results.Failures) > 0 {
		os.Exit(1)
	}
}
