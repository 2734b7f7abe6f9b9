package cli_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// badInput is a command line that must fail with one line naming each of
// want, and change nothing.
type badInput struct {
	args []string
	want []string
}

func bad(args string, want ...string) badInput {
	return badInput{args: strings.Fields(args), want: want}
}

// The daemon in TestBadInput serves vip1 with backend b1 at 198.18.0.3.
const vip1 = "198.18.1.1:80"

var badVIPAddresses = []badInput{
	bad("vip add 198.18.1.2", `"198.18.1.2"`, "ADDR:PORT"),
	bad("vip add 198.18.1.2:0", `"198.18.1.2:0"`, "port 0", "1 to 65535"),
	bad("vip add 198.18.1.2:70000", `"198.18.1.2:70000"`, "ADDR:PORT"),
	bad("vip add [2001:db8::1]", `"[2001:db8::1]"`, "[2001:db8::1]:80"),
	bad("vip add 2001:db8::1:80", `"2001:db8::1:80"`, "[2001:db8::1]:80"),
	bad("vip add ::ffff:198.18.1.2", `"::ffff:198.18.1.2"`),
	bad("vip add [::ffff:198.18.1.2]:80", "::ffff:198.18.1.2", "IPv4-mapped", "198.18.1.2"),
	bad("vip add 0.0.0.0:80", "0.0.0.0", "unicast"),
	bad("vip add [::]:80", "::", "unicast"),
	bad("vip add 224.0.0.1:80", "224.0.0.1", "unicast"),
	bad("vip add [ff02::1]:80", "ff02::1", "unicast"),
	bad("vip add 127.0.0.1:80", "127.0.0.1", "unicast"),
	bad("vip add [fe80::1%eth0]:80", "fe80::1%eth0", "zone"),
	bad("vip add garbage", `"garbage"`, "ADDR:PORT"),
	bad("vip remove 198.18.1.2", `"198.18.1.2"`, "ADDR:PORT"),
	bad("vip remove 0.0.0.0:80", "0.0.0.0", "unicast"),
	bad("backend add --vip 198.18.1.2 b2 198.18.0.4", `"198.18.1.2"`, "ADDR:PORT"),
	bad("backend list --vip garbage", `"garbage"`, "ADDR:PORT"),
}

var badVIPFlags = []badInput{
	bad("vip add 198.18.1.2:80 --proto sctp", `"sctp"`, "tcp or udp"),
	bad("vip remove "+vip1+" --proto sctp", `"sctp"`, "tcp or udp"),
	bad("backend add --vip "+vip1+" --proto sctp b2 198.18.0.4", `"sctp"`, "tcp or udp"),
	bad("vip add 198.18.1.2:80 --prefix4 33", "prefix4 33", "0 to 32"),
	bad("vip add 198.18.1.2:80 --prefix4 -1", "prefix4 -1", "0 to 32"),
	bad("vip add 198.18.1.2:80 --prefix4 x", "--prefix4", `"x"`, "integer"),
	bad("vip add 198.18.1.2:80 --prefix6 129", "prefix6 129", "0 to 128"),
	bad("vip add 198.18.1.2:80 --prefix6 -1", "prefix6 -1", "0 to 128"),
	bad("vip add 198.18.1.2:80 --affinity-timeout 0s", "0s", "1s to 24h"),
	bad("vip add 198.18.1.2:80 --affinity-timeout 500ms", "500ms", "1s to 24h"),
	bad("vip add 198.18.1.2:80 --affinity-timeout -1s", "-1s", "1s to 24h"),
	bad("vip add 198.18.1.2:80 --affinity-timeout 100h", "100h0m0s", "1s to 24h"),
	bad("vip add 198.18.1.2:80 --affinity-timeout 90", "--affinity-timeout", `"90"`, "duration"),
	bad("vip add 255.255.255.255:67 --proto udp", "255.255.255.255", "unicast"),
	bad("backend add --vip "+vip1+" bcast 255.255.255.255", "255.255.255.255", "unicast"),
	bad("vip add 198.18.1.2:80 --session-grace 0s", "session grace 0s", "1s to 1h"),
	bad("vip add 198.18.1.2:80 --session-grace 500ms", "session grace 500ms", "1s to 1h"),
	bad("vip add 198.18.1.2:80 --session-grace -1s", "session grace -1s", "1s to 1h"),
	bad("vip add 198.18.1.2:80 --session-grace 2h", "session grace 2h0m0s", "1s to 1h"),
	bad("vip add 198.18.1.2:80 --session-grace 9", "--session-grace", `"9"`, "duration"),
	bad("vip add 198.18.1.2:80 --mass-failure-percent 0", "mass-failure percent 0", "1 to 100"),
	bad("vip add 198.18.1.2:80 --mass-failure-percent 101", "mass-failure percent 101", "1 to 100"),
	bad("vip add 198.18.1.2:80 --mass-failure-percent -5", "mass-failure percent -5", "1 to 100"),
	bad("vip add 198.18.1.2:80 --table-size 1000", "1000", "prime"),
	bad("vip add 198.18.1.2:80 --table-size 4", "4", "prime"),
	bad("vip add 198.18.1.2:80 --table-size 300000", "300000", "prime"),
	bad("vip add 198.18.1.2:80 --table-size 65537", "65537", "257"),
	bad("vip add 198.18.1.2:80 --table-size 0", "table size 0", "prime"),
	bad("vip add 198.18.1.2:80 --table-size 5000000000", "5000000000", "prime"),
	bad("vip add 198.18.1.2:80 --table-size -1", "--table-size", `"-1"`, "whole number"),
	bad("vip add 198.18.1.2:80 --no-backend maybe", `"maybe"`, "drop or pass"),
	bad("vip add 198.18.1.2:80 --all-down sometimes", `"sometimes"`, "fail-open or fail-closed"),
}

// badCheckFlags are the check flags' bad values, for vip add and backend
// add alike.
var badCheckFlags = []badInput{
	bad("--check ftp", `"ftp"`, "tcp, http, engineio or none"),
	bad("--check tcp --check-interval 0s", "--check-interval", `"0s"`, "positive"),
	bad("--check tcp --check-interval -1s", "interval -1s", "positive"),
	bad("--check tcp --check-interval soon", "--check-interval", `"soon"`, "duration"),
	bad("--check tcp --check-timeout 3s", "timeout 3s", "shorter than interval 2s"),
	bad("--check tcp --check-interval 1s --check-timeout 1s", "timeout 1s", "shorter than interval 1s"),
	bad("--check tcp --check-timeout 0s", "--check-timeout", `"0s"`, "positive"),
	bad("--check tcp --check-interval 2ns", "interval 2ns", "100ms to 1h"),
	bad("--check tcp --check-interval 100000h", "interval 100000h0m0s", "100ms to 1h"),
	bad("--check tcp --check-timeout 1ns", "timeout 1ns", "10ms or more"),
	bad("--check tcp --check-rise 0", "--check-rise", `"0"`, "1 to 100"),
	bad("--check tcp --check-rise 101", "rise 101", "between 1 and 100"),
	bad("--check tcp --check-fall 101", "fall 101", "between 1 and 100"),
	bad("--check tcp --check-fall -1", "fall -1", "between 1 and 100"),
	bad("--check http --check-path relative", `"relative"`, `start with "/"`),
	bad("--check http --check-path //host/x", `"//host/x"`, `"//"`),
	bad("--check engineio --check-path /socket.io/?EIO=3", `"/socket.io/?EIO=3"`, "query"),
	bad("--check http --check-method POST", `"POST"`, "GET or HEAD"),
	bad("--check http --check-status 999", "status 999", "between 100 and 599"),
	bad("--check http --check-status 0", "--check-status", `"0"`, "100 to 599"),
	bad("--check http --check-method POST --check-status 999", `"POST"`, "status 999"),
	bad("--check tcp --check-port 70000", "70000", "1 to 65535"),
	bad("--check tcp --check-port 0", "--check-port", `"0"`, "1 to 65535"),
	bad("--check tcp --check-port -1", "--check-port", `"-1"`, "whole number"),
	bad("--check-interval 1s", "--check-interval", "--check KIND"),
	bad("--check-path /x", "--check-path", "--check KIND"),
	bad("--check tcp --check-path /x", "--check-path", "--check tcp"),
	bad("--check engineio --check-method GET", "--check-method", "--check engineio"),
	bad("--check none --check-interval 1s", "--check-interval", "--check none"),
}

var badBackendInputs = []badInput{
	bad("backend add --vip "+vip1+" bad..name! 198.18.0.4", `"bad..name!"`, "letters, digits"),
	bad("backend add --vip "+vip1+" -- -x 198.18.0.4", `"-x"`, "starting with a letter or digit"),
	bad("backend add --vip "+vip1+" -x 198.18.0.4", "-x", "--help"),
	bad("backend add --vip "+vip1+" "+strings.Repeat("n", 70)+" 198.18.0.4", strings.Repeat("n", 70), "1-63"),
	bad("backend add --vip "+vip1+" b2 nonsense", `"nonsense"`, "IP address"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4:80", `"198.18.0.4:80"`, "IP address"),
	bad("backend add --vip "+vip1+" b2 0.0.0.0", "0.0.0.0", "unicast"),
	bad("backend add --vip "+vip1+" b2 ff02::1", "ff02::1", "unicast"),
	bad("backend add --vip "+vip1+" b2 ::ffff:198.18.0.4", "::ffff:198.18.0.4", "IPv4-mapped"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --mac zz:zz", `"zz:zz"`, "02:00:00:00:00:01"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --mac 01:00:5e:00:00:01", `"01:00:5e:00:00:01"`, "unicast"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --mac 00:00:00:00:00:00", `"00:00:00:00:00:00"`, "unicast"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --mac 02:00:00:00:00:00:00:01", `"02:00:00:00:00:00:00:01"`, "Ethernet"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --weight 10001", "10001", "0 to 10000"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --weight -1", "--weight", `"-1"`, "0 to 10000"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --weight abc", "--weight", `"abc"`, "0 to 10000"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --port 0", "port 0", "1 to 65535"),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 --port 70000", "70000", "1 to 65535"),
	bad("backend add --vip "+vip1+" b1 198.18.0.4", `"b1"`, "already exists"),
	bad("backend add --vip "+vip1+" b2 198.18.0.3", "198.18.0.3", "b1"),
	bad("backend add --vip 198.18.9.9:80 b2 198.18.0.4", "198.18.9.9:80", "not configured"),
	bad("backend add --vip "+vip1+" --proto udp b2 198.18.0.4", vip1+"/udp", "not configured"),
	bad("backend add b2 198.18.0.4", `"vip"`),
	bad("backend add --vip "+vip1+" b2", "NAME ADDRESS", `["b2"]`),
	bad("backend add --vip "+vip1+" b2 198.18.0.4 extra", "NAME ADDRESS", `"extra"`),
	bad("backend set --vip "+vip1+" b1 --weight 10001", "10001", "0 to 10000"),
	bad("backend set --vip "+vip1+" b1 --weight -1", "--weight", `"-1"`),
	bad("backend set --vip "+vip1+" b1 --weight abc", "--weight", `"abc"`),
	bad("backend set --vip "+vip1+" b1", `"weight"`),
	bad("backend set --vip "+vip1+" nob --weight 2", `"nob"`, "not in VIP"),
	bad("backend set --vip 198.18.9.9:80 b1 --weight 2", "198.18.9.9:80", "not configured"),
	bad("backend set --vip "+vip1+" bad/name --weight 2", `"bad/name"`, "letters, digits"),
	bad("backend set --vip "+vip1+" --weight 2", "NAME", "0 argument"),
	bad("backend remove --vip "+vip1+" nob", `"nob"`, "not in VIP"),
	bad("backend remove --vip 198.18.9.9:80 b1", "198.18.9.9:80", "not configured"),
	bad("backend remove --vip "+vip1+" bad/name", `"bad/name"`, "letters, digits"),
	bad("backend remove --vip "+vip1, "NAME", "0 argument"),
	bad("backend remove --vip "+vip1+" b1 b2", "NAME", `["b1" "b2"]`),
	bad("backend drain --vip "+vip1+" nob", `"nob"`, "not in VIP"),
	bad("backend drain --vip "+vip1+" nob --wait", `"nob"`, "not in VIP"),
	bad("backend drain --vip 198.18.9.9:80 b1", "198.18.9.9:80", "not configured"),
	bad("backend drain --vip "+vip1+" bad/name", `"bad/name"`, "letters, digits"),
	bad("backend drain --vip "+vip1, "NAME", "0 argument"),
	bad("backend drain --vip "+vip1+" b1 --timeout 1m", "--timeout", "--wait"),
	bad("backend drain --vip "+vip1+" b1 --wait --timeout 0s", "0s", "not positive"),
	bad("backend drain --vip "+vip1+" b1 --wait --timeout later", "--timeout", `"later"`, "duration"),
	bad("backend enable --vip "+vip1+" nob", `"nob"`, "not in VIP"),
	bad("backend enable --vip 198.18.9.9:80 b1", "198.18.9.9:80", "not configured"),
	bad("backend enable --vip "+vip1+" bad/name", `"bad/name"`, "letters, digits"),
	bad("backend enable --vip "+vip1+" b1 b2", "NAME", `["b1" "b2"]`),
	bad("backend list --vip 198.18.9.9:80", "198.18.9.9:80", "not configured"),
	bad("backend list extra", "no arguments", `"extra"`),
	bad("backend list --proto udp", "--proto", "--vip"),
	bad("backend list --vip "+vip1+" --proto sctp", `"sctp"`, "tcp or udp"),
}

var badOtherInputs = []badInput{
	bad("vip add "+vip1, vip1, "already exists"),
	bad("vip add", "ADDR:PORT", "0 argument"),
	bad("vip add 198.18.1.2:80 198.18.1.3:80", "ADDR:PORT", `"198.18.1.3:80"`),
	bad("vip remove", "ADDR:PORT", "0 argument"),
	bad("vip remove 198.18.9.9:80", "198.18.9.9:80", "not configured"),
	bad("vip remove "+vip1+" --proto udp", vip1+"/udp", "not configured"),
	bad("vip list extra", "no arguments", `"extra"`),
	bad("vip list -o yaml", `"yaml"`, "table or json"),
	bad("backend list -o yaml", `"yaml"`, "table or json"),
	bad("status -o yaml", `"yaml"`, "table or json"),
	bad("status extra", "no arguments", `"extra"`),
	bad("version extra", "no arguments", `"extra"`),
	bad("bogus", `"bogus"`, "tether --help"),
	bad("vip bogus", `"bogus"`, "tether vip --help"),
	bad("backend bogus", `"bogus"`, "tether backend --help"),
	bad("vip add 198.18.1.2:80 --bogus", "-bogus", "tether vip add --help"),
	bad("--bogus status", "-bogus", "tether --help"),
	bad("help bogus", "bogus"),
	bad("detach", `"iface"`),
	bad("detach --iface lo extra", "no arguments", `"extra"`),
	bad("run", `"iface"`),
}

// badRunInputs fail before tether run touches the system; each also gets
// --bpffs, --state-dir and --socket in temporary directories.
var badRunInputs = []badInput{
	bad("run --iface lo --mode turbo", `"turbo"`, "native, generic or auto"),
	bad("run --iface does-not-exist0", `"does-not-exist0"`),
	bad("run --iface lo extra", "no arguments", `"extra"`),
	bad("run --iface lo --max-vips 0", "max VIPs 0 is out of range"),
	bad("run --iface lo --max-vips 5000000000", "--max-vips 5000000000"),
	bad("run --iface lo --max-backends 1", "max backends 1"),
	bad("run --iface lo --max-table-size 2", "table size 2"),
	bad("run --iface lo --affinity-capacity 0", "affinity capacity 0 is out of range"),
	bad("run --iface lo --watchdog-timeout -1s", "-1s", "negative"),
	bad("run --iface lo --watchdog-timeout 1s", "watchdog timeout 1s", "3s to 24h"),
	bad("run --iface lo --watchdog-timeout 100000h", "watchdog timeout 100000h0m0s", "3s to 24h"),
	bad("run --iface lo --check-workers 0", "check workers 0", "at least 1"),
	bad("run --iface lo --socket-group no-such-group-x", `"no-such-group-x"`),
	bad("run --iface lo --metrics-addr nonsense", "nonsense"),
	{args: []string{"run", "--iface", "lo", "--config", ""}, want: []string{"--config is empty", "YAML file"}},
}

func TestBadInput(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", vip1)
	d.mustRun("backend", "add", "--vip", vip1, "b1", "198.18.0.3")

	var rows []badInput
	for _, group := range [][]badInput{badVIPAddresses, badVIPFlags, badBackendInputs, badOtherInputs} {
		rows = append(rows, group...)
	}
	for _, row := range badCheckFlags {
		rows = append(rows,
			badInput{args: append([]string{"vip", "add", "198.18.1.2:80"}, row.args...), want: row.want},
			badInput{args: append([]string{"backend", "add", "--vip", vip1, "b2", "198.18.0.4"}, row.args...), want: row.want})
	}
	for _, row := range badRunInputs {
		// A state file that cannot be read stops run before it touches
		// the system, should a bad value be accepted.
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "state.json"), 0o700); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"--socket", filepath.Join(dir, "tether.sock")}, row.args...)
		args = append(args, "--bpffs", filepath.Join(dir, "bpffs"), "--state-dir", dir)
		rows = append(rows, badInput{args: args, want: row.want})
	}
	for _, bad := range []string{"", "bad name", "-x"} {
		rows = append(rows, badInput{args: []string{"backend", "add", "--vip", vip1, "--", bad, "198.18.0.4"}, want: []string{strconv.Quote(bad), "backend name"}})
	}

	before, beforeFile := d.statusJSON(), d.stateFile()
	for _, row := range rows {
		stdout, stderr, err := d.run(row.args...)
		switch {
		case err == nil:
			t.Errorf("tether %q succeeded, want an error naming %q", row.args, row.want)
		case strings.Contains(err.Error(), "\n"):
			t.Errorf("tether %q: error has several lines:\n%s", row.args, err)
		default:
			for _, want := range row.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("tether %q: error %q does not contain %q", row.args, err, want)
				}
			}
		}
		if strings.Contains(stdout, "Incorrect Usage") || stderr != "" {
			t.Errorf("tether %q printed stdout %q, stderr %q", row.args, stdout, stderr)
		}
		if after := d.statusJSON(); after != before {
			t.Fatalf("tether %q changed the daemon's status:\nbefore %s\nafter  %s", row.args, before, after)
		}
		if after := d.stateFile(); after != beforeFile {
			t.Fatalf("tether %q changed the state file:\nbefore %s\nafter  %s", row.args, beforeFile, after)
		}
	}
}
