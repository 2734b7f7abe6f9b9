package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tether-lb/tether/userspace/control"
)

func statsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stats",
		Usage: "show the datapath's counters (with --watch, refreshed with rates)",
		Flags: []cli.Flag{
			outputFlag(),
			&cli.BoolFlag{Name: "watch", Usage: "print again every --interval, with per-second rates"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "with --watch: time between samples"},
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			if c.IsSet("interval") && !c.Bool("watch") {
				return fmt.Errorf("--interval %s needs --watch", c.Duration("interval"))
			}
			if c.Duration("interval") < 100*time.Millisecond {
				return fmt.Errorf("interval %s is too short, expected at least 100ms", c.Duration("interval"))
			}
			var previous *control.Stats
			var taken time.Time
			for {
				ctx, cancel := withTimeout(c)
				st, err := client(c).Stats(ctx)
				cancel()
				if err != nil {
					return err
				}
				now := time.Now()
				elapsed := now.Sub(taken).Seconds()
				if err := render(c, st, func(w io.Writer) { statsTable(w, st, previous, elapsed) }); err != nil {
					return err
				}
				if !c.Bool("watch") {
					return nil
				}
				previous, taken = &st, now
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(c.Duration("interval")):
				}
				fmt.Fprintln(c.App.Writer)
			}
		},
	}
}

// statsTable prints counters, and rates against previous when there is one.
func statsTable(w io.Writer, st control.Stats, previous *control.Stats, elapsed float64) {
	rate := func(now, before uint64) string {
		if previous == nil || elapsed <= 0 || now < before {
			return ""
		}
		return fmt.Sprintf("%.1f/s", float64(now-before)/elapsed)
	}
	var before control.Stats
	if previous != nil {
		before = *previous
	}
	fmt.Fprintln(w, "SCOPE\tCOUNTER\tPACKETS\tRATE\tBYTES")
	for _, name := range slices.Sorted(maps.Keys(st.Global.Packets)) {
		fmt.Fprintf(w, "all\t%s\t%d\t%s\t%d\n", name, st.Global.Packets[name], rate(st.Global.Packets[name], before.Global.Packets[name]), st.Global.Bytes[name])
	}
	for _, name := range slices.Sorted(maps.Keys(st.Global.Affinity)) {
		fmt.Fprintf(w, "all\taffinity_%s\t%d\t%s\t\n", name, st.Global.Affinity[name], rate(st.Global.Affinity[name], before.Global.Affinity[name]))
	}
	fmt.Fprintf(w, "all\taffinity_entries\t%d\t\t\n", st.AffinityEntries)
	fmt.Fprintf(w, "all\taffinity_probationary\t%d\t\t\n", st.AffinityProbationary)
	for i, v := range st.VIPs {
		var vipBefore control.VIPStats
		if i < len(before.VIPs) && before.VIPs[i].VIP == v.VIP {
			vipBefore = before.VIPs[i]
		}
		for _, name := range slices.Sorted(maps.Keys(v.Packets)) {
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\n", v.VIP, name, v.Packets[name], rate(v.Packets[name], vipBefore.Packets[name]), v.Bytes[name])
		}
		for j, b := range v.Backends {
			var backendBefore control.BackendStats
			if j < len(vipBefore.Backends) && vipBefore.Backends[j].Name == b.Name {
				backendBefore = vipBefore.Backends[j]
			}
			for _, name := range slices.Sorted(maps.Keys(b.Packets)) {
				fmt.Fprintf(w, "%s %s\t%s\t%d\t%s\t%d\n", v.VIP, b.Name, name, b.Packets[name], rate(b.Packets[name], backendBefore.Packets[name]), b.Bytes[name])
			}
		}
	}
}
