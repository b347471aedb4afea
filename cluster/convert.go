package cluster

import (
	"github.com/quorumq/quorumq/fsm"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func resultToPeer(r *fsm.Result) *peerv1.Result {
	out := &peerv1.Result{Code: uint32(r.Code), Detail: r.Detail, Now: r.Now, DeadLettered: r.DeadLettered,
		Moved: r.Moved, PurgedReady: r.PurgedReady, PurgedDead: r.PurgedDead}
	for _, e := range r.Enqueued {
		out.Enqueued = append(out.Enqueued, &peerv1.Enqueued{Seq: e.Seq, Duplicate: e.Duplicate})
	}
	for _, d := range r.Delivered {
		out.Delivered = append(out.Delivered, &peerv1.Delivery{Seq: d.Seq, Epoch: d.Epoch, Deliveries: d.Deliveries,
			Deadline: d.Deadline, EnqueuedAt: d.EnqueuedAt, Payload: d.Payload, Key: d.Key, Headers: d.Headers})
	}
	for _, l := range r.Leases {
		out.Leases = append(out.Leases, uint32(l))
	}
	return out
}

func resultFromPeer(r *peerv1.Result) *fsm.Result {
	out := &fsm.Result{Code: fsm.Code(r.GetCode()), Detail: r.GetDetail(), Now: r.GetNow(), DeadLettered: r.GetDeadLettered(),
		Moved: r.GetMoved(), PurgedReady: r.GetPurgedReady(), PurgedDead: r.GetPurgedDead()}
	for _, e := range r.GetEnqueued() {
		out.Enqueued = append(out.Enqueued, fsm.Enqueued{Seq: e.GetSeq(), Duplicate: e.GetDuplicate()})
	}
	for _, d := range r.GetDelivered() {
		out.Delivered = append(out.Delivered, fsm.Delivery{Seq: d.GetSeq(), Epoch: d.GetEpoch(), Deliveries: d.GetDeliveries(),
			Deadline: d.GetDeadline(), EnqueuedAt: d.GetEnqueuedAt(), Payload: d.GetPayload(), Key: d.GetKey(), Headers: d.GetHeaders()})
	}
	for _, l := range r.GetLeases() {
		out.Leases = append(out.Leases, fsm.LeaseOutcome(l))
	}
	return out
}

func statsToPeer(s fsm.Stats) *peerv1.Stats {
	return &peerv1.Stats{Ready: s.Ready, Delayed: s.Delayed, Leased: s.Leased, Dead: s.Dead, Bytes: s.Bytes,
		OldestReadyAt: s.OldestReadyAt, Now: s.Now, NextSeq: s.NextSeq, EnqueuedTotal: s.EnqueuedTotal,
		AckedTotal: s.AckedTotal, DeadLetteredTotal: s.DeadLetteredTotal, ExpiredTotal: s.ExpiredTotal}
}

// statsToPublic is a partition's stats as the public API shows them.
func statsToPublic(s *peerv1.Stats) *qv1.QueueStats {
	return &qv1.QueueStats{Ready: s.GetReady(), Delayed: s.GetDelayed(), Leased: s.GetLeased(), Dead: s.GetDead(), Bytes: s.GetBytes(),
		EnqueuedTotal: s.GetEnqueuedTotal(), AckedTotal: s.GetAckedTotal(), DeadLetteredTotal: s.GetDeadLetteredTotal(), ExpiredTotal: s.GetExpiredTotal()}
}
