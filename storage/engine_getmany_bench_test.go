package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// BenchmarkEngineGetMany measures GetMany as the dedup prefetch uses it:
// 100 sorted random keys, most absent, against a partition holding n
// random keys already flushed to sstables.
func BenchmarkEngineGetMany(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, mode := range []string{"getmany", "get", "fresh-iter"} { // get, fresh-iter: what GetMany is measured against
			b.Run(fmt.Sprintf("keys=%d/%s", n, mode), func(b *testing.B) {
				e := openTestEngine(b, filepath.Join(b.TempDir(), "state"), nil)
				defer closeEngine(b, e)
				kv := e.Partition("q/orders/17/3")
				rng := rand.New(rand.NewPCG(1, 2))
				key := func() []byte { return binary.BigEndian.AppendUint64([]byte("u"), rng.Uint64()) }
				val := make([]byte, 16)
				for i := range n {
					kv.Set(key(), val)
					if i%1000 == 999 {
						if err := kv.Commit(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := kv.Sync(); err != nil {
					b.Fatal(err)
				}
				if err := e.db.Flush(); err != nil {
					b.Fatal(err)
				}
				found := 0
				for b.Loop() {
					keys := make([][]byte, 100)
					for i := range keys {
						keys[i] = key()
					}
					slices.SortFunc(keys, bytes.Compare)
					switch mode {
					case "getmany":
						kv.GetMany(keys, func(i int, v []byte, ok bool) {
							if ok {
								found++
							}
						})
					case "get":
						for _, k := range keys {
							if _, c, err := e.db.Get(kv.prefixed(&kv.key, k)); err == nil {
								found++
								c.Close()
							}
						}
					case "fresh-iter":
						for _, k := range keys {
							pk := kv.prefixed(&kv.key, k)
							it, _ := e.db.NewIter(&pebble.IterOptions{LowerBound: pk, UpperBound: kv.end, UseL6Filters: true})
							if it.SeekPrefixGE(pk) && bytes.Equal(it.Key(), pk) {
								found++
							}
							it.Close()
						}
					}
				}
				b.ReportMetric(float64(found), "found")
			})
		}
	}
}
