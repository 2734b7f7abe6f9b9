package maps

import "github.com/tether-lb/tether/loader"

// Outcome is what the datapath did with a packet (enum outcome in
// bpf/consts.h); every packet is counted under exactly one.
type Outcome = loader.TetherOutcome

// The outcomes, as the datapath numbers them.
const (
	OutcomeForwardTX            = loader.TetherOutcomeOUTCOME_FORWARD_TX
	OutcomeForwardRedirect      = loader.TetherOutcomeOUTCOME_FORWARD_REDIRECT
	OutcomePassInactive         = loader.TetherOutcomeOUTCOME_PASS_INACTIVE
	OutcomePassWatchdog         = loader.TetherOutcomeOUTCOME_PASS_WATCHDOG
	OutcomePassNotIP            = loader.TetherOutcomeOUTCOME_PASS_NOT_IP
	OutcomePassNotTCPUDP        = loader.TetherOutcomeOUTCOME_PASS_NOT_TCP_UDP
	OutcomePassNotVIP           = loader.TetherOutcomeOUTCOME_PASS_NOT_VIP
	OutcomePassFragment         = loader.TetherOutcomeOUTCOME_PASS_FRAGMENT
	OutcomePassIPv6ExtLimit     = loader.TetherOutcomeOUTCOME_PASS_IPV6EXT_LIMIT
	OutcomePassNoBackend        = loader.TetherOutcomeOUTCOME_PASS_NO_BACKEND
	OutcomeDropNoBackend        = loader.TetherOutcomeOUTCOME_DROP_NO_BACKEND
	OutcomeDropTxPortMissing    = loader.TetherOutcomeOUTCOME_DROP_TX_PORT_MISSING
	OutcomeDropMalformedEth     = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_ETH
	OutcomeDropMalformedVLAN    = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_VLAN
	OutcomeDropMalformedIPv4    = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV4
	OutcomeDropMalformedIPv6    = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6
	OutcomeDropMalformedIPv6Ext = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6EXT
	OutcomeDropMalformedL4      = loader.TetherOutcomeOUTCOME_DROP_MALFORMED_L4
	// Outcomes is how many there are.
	Outcomes = loader.TetherOutcomeOUTCOME_MAX
)

// OutcomeNames name the outcomes, indexed by Outcome; the same names label
// the metrics and tether stats.
var OutcomeNames = [Outcomes]string{
	OutcomeForwardTX:            "forwarded_tx",
	OutcomeForwardRedirect:      "forwarded_redirect",
	OutcomePassInactive:         "passed_inactive",
	OutcomePassWatchdog:         "passed_watchdog",
	OutcomePassNotIP:            "passed_not_ip",
	OutcomePassNotTCPUDP:        "passed_not_tcp_udp",
	OutcomePassNotVIP:           "passed_not_vip",
	OutcomePassFragment:         "passed_fragment",
	OutcomePassIPv6ExtLimit:     "passed_ipv6_ext_limit",
	OutcomePassNoBackend:        "passed_no_backend",
	OutcomeDropNoBackend:        "dropped_no_backend",
	OutcomeDropTxPortMissing:    "dropped_tx_port_missing",
	OutcomeDropMalformedEth:     "dropped_malformed_ethernet",
	OutcomeDropMalformedVLAN:    "dropped_malformed_vlan",
	OutcomeDropMalformedIPv4:    "dropped_malformed_ipv4",
	OutcomeDropMalformedIPv6:    "dropped_malformed_ipv6",
	OutcomeDropMalformedIPv6Ext: "dropped_malformed_ipv6_ext",
	OutcomeDropMalformedL4:      "dropped_malformed_l4",
}

// BackendOutcomes are the outcomes counted in a backend's slot: a packet
// is counted there only once a backend was chosen.
var BackendOutcomes = []Outcome{OutcomeForwardTX, OutcomeForwardRedirect, OutcomeDropTxPortMissing}

// XDP verdicts (include/uapi/linux/bpf.h).
const (
	XDPAborted  uint32 = 0
	XDPDrop     uint32 = 1
	XDPPass     uint32 = 2
	XDPTx       uint32 = 3
	XDPRedirect uint32 = 4
)

// Verdict is the XDP verdict the datapath returns with an outcome, as
// outcome_verdict() in bpf/tether.c decides it.
func Verdict(o Outcome) uint32 {
	switch o {
	case OutcomeForwardTX:
		return XDPTx
	case OutcomeForwardRedirect:
		return XDPRedirect
	case OutcomePassInactive, OutcomePassWatchdog, OutcomePassNotIP, OutcomePassNotTCPUDP,
		OutcomePassNotVIP, OutcomePassFragment, OutcomePassIPv6ExtLimit, OutcomePassNoBackend:
		return XDPPass
	default:
		return XDPDrop
	}
}

// AffinityEvent is an affinity table event (enum affinity_event), counted
// beside the outcome of the same packet.
type AffinityEvent = loader.TetherAffinityEvent

// The affinity events, as the datapath numbers them.
const (
	AffinityHit            = loader.TetherAffinityEventAFFINITY_HIT
	AffinityMiss           = loader.TetherAffinityEventAFFINITY_MISS
	AffinityExpired        = loader.TetherAffinityEventAFFINITY_EXPIRED
	AffinityStale          = loader.TetherAffinityEventAFFINITY_STALE
	AffinityInsert         = loader.TetherAffinityEventAFFINITY_INSERT
	AffinityInsertFailed   = loader.TetherAffinityEventAFFINITY_INSERT_FAILED
	AffinityEvictProbation = loader.TetherAffinityEventAFFINITY_EVICT_PROBATION
	AffinityPromote        = loader.TetherAffinityEventAFFINITY_PROMOTE
	AffinityFull           = loader.TetherAffinityEventAFFINITY_FULL
	// AffinityEvents is how many there are.
	AffinityEvents = loader.TetherAffinityEventAFFINITY_EVENT_MAX
)

// AffinityEventNames name the affinity events, indexed by AffinityEvent.
var AffinityEventNames = [AffinityEvents]string{
	AffinityHit:            "hit",
	AffinityMiss:           "miss",
	AffinityExpired:        "expired",
	AffinityStale:          "stale",
	AffinityInsert:         "insert",
	AffinityInsertFailed:   "insert_failed",
	AffinityEvictProbation: "evicted_probation",
	AffinityPromote:        "promoted",
	AffinityFull:           "full",
}
