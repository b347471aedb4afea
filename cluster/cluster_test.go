package cluster

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func TestThreeNodeEnqueueReceiveAck(t *testing.T) {
	c := startCluster(t, 3)
	q0, _ := c.client(0)
	ctx := ctxT(t, 60*time.Second)
	created, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "orders", Partitions: 6, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if created.GetQueue().GetPartitions() != 6 {
		t.Fatalf("created %v", created)
	}
	// Enqueue through node 1, receive and ack through node 3.
	q1, _ := c.client(1)
	var msgs []*qv1.Message
	for i := range 60 {
		msgs = append(msgs, &qv1.Message{Payload: []byte(fmt.Sprintf("m%d", i)), DedupId: fmt.Sprintf("d%d", i)})
	}
	res, err := q1.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "orders", Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetResults()) != 60 {
		t.Fatalf("%d results", len(res.GetResults()))
	}
	// The same dedup ids again store nothing.
	again, err := q1.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "orders", Messages: msgs[:10]})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range again.GetResults() {
		if !r.GetDuplicate() || r.GetMessageId() != res.GetResults()[i].GetMessageId() {
			t.Fatalf("retry %d: %v, first %v", i, r, res.GetResults()[i])
		}
	}
	q2, cl2 := c.client(2)
	seen := map[string]bool{}
	for len(seen) < 60 {
		got, err := q2.Receive(ctx, &qv1.ReceiveRequest{Queue: "orders", Max: 25, Wait: durationpb.New(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.GetMessages()) == 0 {
			t.Fatalf("nothing received after %d", len(seen))
		}
		var receipts []string
		for _, m := range got.GetMessages() {
			if seen[string(m.GetPayload())] {
				t.Fatalf("%s delivered twice", m.GetPayload())
			}
			seen[string(m.GetPayload())] = true
			receipts = append(receipts, m.GetReceipt())
		}
		ack, err := q2.Ack(ctx, &qv1.AckRequest{Queue: "orders", Receipts: receipts})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ack.GetResults() {
			if r.GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
				t.Fatalf("ack %v", r)
			}
		}
	}
	st, err := q0.GetQueue(ctx, &qv1.GetQueueRequest{Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	if s := st.GetQueue().GetStats(); s.GetAckedTotal() != 60 || s.GetReady() != 0 || s.GetLeased() != 0 {
		t.Fatalf("stats %v", s)
	}
	parts, err := cl2.Partitions(ctx, &qv1.PartitionsRequest{Queue: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	leaders := map[string]int{}
	replicas := map[string]int{}
	for _, p := range parts.GetPartitions() {
		leaders[p.GetLeader()]++
		for _, r := range p.GetReplicas() {
			replicas[r.GetNodeId()]++
		}
	}
	if len(replicas) != 3 || replicas["n1"] != 6 || replicas["n2"] != 6 || replicas["n3"] != 6 {
		t.Fatalf("replicas per node %v", replicas)
	}
	t.Logf("leaders per node %v", leaders)

	// HTTP: liveness, readiness and metrics.
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": `quorumq_partition_messages{queue="orders",partition="0",state="ready"} 0`,
	} {
		c.waitFor(path, 10*time.Second, func() bool {
			resp, err := http.Get("http://" + c.nodes[0].HTTPAddr() + path)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK && strings.Contains(string(body), want)
		})
	}
}
