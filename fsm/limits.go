package fsm

import "time"

// Limits on what one command may carry. The cluster checks them at the edge
// (ValidateCommand) before anything reaches Raft; the state machine checks
// them again and refuses, as a result, a command that breaks them.
const (
	// CommandVersion is the newest command format this state machine applies.
	CommandVersion = 1

	MaxPayloadBytes   = 1 << 20 // one message's payload
	MaxBatchMessages  = 1000    // messages in one Enqueue, leases in one Ack/...
	MaxBatchBytes     = 8 << 20 // payloads+keys+headers in one Enqueue
	MaxKeyBytes       = 256
	MaxDedupIDBytes   = 128
	MaxHeaders        = 32
	MaxHeaderKeyBytes = 128
	MaxHeaderValBytes = 4096
	MaxConsumerBytes  = 128
	MaxReasonBytes    = 1024
	MaxReceive        = 1000

	// MaxStamp bounds a command's stamp (Unix ns, year 2116) so that stamp
	// plus any delay, lease or window cannot overflow.
	MaxStamp = 1 << 62

	MaxDelay           = 24 * time.Hour
	MinVisibility      = time.Millisecond
	MaxVisibility      = 12 * time.Hour
	MaxDedupWindow     = 7 * 24 * time.Hour
	MinRetention       = time.Second
	MaxRetention       = 365 * 24 * time.Hour
	MaxMaxDeliveries   = 1000
	DefaultVisibility  = 30 * time.Second
	DefaultDedupWindow = 5 * time.Minute
	DefaultRetention   = 4 * 24 * time.Hour
	DefaultMaxDelivery = 10
)
