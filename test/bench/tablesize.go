package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/tether-lb/tether/loader"
)

// TableSizeRow is tether's prog.Run cost on the same IPv4 clients with one
// affinity table size.
type TableSizeRow struct {
	Capacity uint32  // --affinity-capacity
	MiB      float64 // the table's memory
	HotNs    float64 // one client
	ColdNs   float64 // every packet another of the clients
	// FloorColdNs is the bucket read floor over a table of the same size,
	// cold: the rotator, a MAC swap and the bucket read.
	FloorColdNs float64
}

// tableSizeCapacities are the table sizes compared: a quarter of the
// default, the default and 4 and 8 times it.
var tableSizeCapacities = []uint32{1 << 18, 1 << 20, 1 << 22, 1 << 23}

// measureTableSizes runs tether's hot and cold IPv4 prog.Run rows over
// tables of several sizes holding the same maxClients4 clients, beside the
// bucket read floor over a table of each size: the lookups are the same,
// only the memory they are spread over differs.
func measureTableSizes(ctx context.Context, repeat uint32, rounds int, progress io.Writer) ([]TableSizeRow, error) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
	var rows []TableSizeRow
	for _, capacity := range tableSizeCapacities {
		fmt.Fprintf(progress, "prog.Run over a table for %d clients\n", capacity)
		opts := loader.DefaultOptions()
		opts.AffinityCapacity = capacity
		fl, err := newFloors(capacity)
		if err != nil {
			return nil, err
		}
		dp, err := newBenchDatapath(opts, families(maxClients4, 0)[:1], mac, mac)
		if err != nil {
			return nil, errors.Join(err, fl.Close())
		}
		results, err := measureProgRun(ctx, dp, fl, repeat, rounds, io.Discard)
		err = errors.Join(err, dp.Close(), fl.Close())
		if err != nil {
			return nil, fmt.Errorf("prog.Run over a table for %d clients: %w", capacity, err)
		}
		hot, _ := results.Row("IPv4", 1, programTether)
		cold, _ := results.Row("IPv4", maxClients4, programTether)
		floor, _ := results.Row("IPv4", maxClients4, programBucketRead)
		rows = append(rows, TableSizeRow{Capacity: capacity, MiB: tableMiB(capacity), HotNs: hot.ThreadNs, ColdNs: cold.ThreadNs, FloorColdNs: floor.ThreadNs})
	}
	return rows, nil
}
