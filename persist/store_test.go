package persist_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lookback-dev/lookback/persist"
	"github.com/lookback-dev/lookback/persist/persisttest"
)

func newRedisStore(t *testing.T, mutate func(*persist.RedisStoreConfig)) *persist.RedisStore {
	t.Helper()
	client, prefix := persist.RedisTestClient(t)
	cfg := persist.DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	cfg.ClaimTTL = persisttest.ClaimTTL
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := persist.NewRedisStore(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRedisStore(t *testing.T) {
	persisttest.TestCheckpointStore(t, func(t *testing.T) persist.CheckpointStore {
		return newRedisStore(t, nil)
	})
}

// TestRedisStoreSplitCommits runs the suite with tiny script calls, so
// that large checkpoints are split into several CAS'd calls.
func TestRedisStoreSplitCommits(t *testing.T) {
	persisttest.TestCheckpointStore(t, func(t *testing.T) persist.CheckpointStore {
		return newRedisStore(t, func(c *persist.RedisStoreConfig) { c.MaxCallBytes = 4096 })
	})
}

func TestRedisStoreKeys(t *testing.T) {
	ctx := context.Background()
	client, prefix := persist.RedisTestClient(t)
	cfg := persist.DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	s, err := persist.NewRedisStore(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := persist.Owner{Node: "n", Generation: 3}
	if _, err := s.Claim(ctx, 7, o); err != nil {
		t.Fatal(err)
	}
	if errs := s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 7, Owner: o,
		States: []persist.UserState{{UserID: "alice", State: []byte("s")}}, Offsets: map[string]int64{"clicks": 42}}}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	claimKey := prefix + ":{p7}:claim"
	h, err := client.HGetAll(ctx, claimKey).Result()
	if err != nil || h["node"] != "n" || h["generation"] != "3" || h["renewed_ms"] == "" {
		t.Fatalf("claim hash %v, %v", h, err)
	}
	if v, err := client.HGet(ctx, prefix+":{p7}:offsets", "clicks").Result(); err != nil || v != "42" {
		t.Fatalf("offsets hash: %q, %v", v, err)
	}
	userKey := prefix + ":{p7}:u:alice"
	if v, err := client.Get(ctx, userKey).Result(); err != nil || v != "s" {
		t.Fatalf("user key: %q, %v", v, err)
	}
	// The state expires StateTTL after its last write; the claim never.
	ttl, err := client.PTTL(ctx, userKey).Result()
	if err != nil || ttl <= cfg.StateTTL-cfg.StateTTL/100 || ttl > cfg.StateTTL {
		t.Fatalf("user key TTL %v, %v; want about %v", ttl, err, cfg.StateTTL)
	}
	if ttl, _ := client.PTTL(ctx, claimKey).Result(); ttl >= 0 {
		t.Fatalf("claim key has a TTL %v", ttl)
	}
	// StateTTL 0: no expiry.
	cfg.StateTTL = 0
	s0, _ := persist.NewRedisStore(client, cfg)
	if errs := s0.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 7, Owner: o,
		States: []persist.UserState{{UserID: "bob", State: []byte("s")}}}}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if ttl, _ := client.PTTL(ctx, prefix+":{p7}:u:bob").Result(); ttl >= 0 {
		t.Fatalf("StateTTL 0 set a TTL %v", ttl)
	}
}

func TestRedisStoreConfigValidate(t *testing.T) {
	good := persist.DefaultRedisStoreConfig()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (persist.RedisStoreConfig{}).Validate(); err != nil {
		t.Fatalf("zero config (defaults, StateTTL never): %v", err)
	}
	for _, bad := range []persist.RedisStoreConfig{
		{KeyPrefix: "a{b}"},
		{ClaimTTL: -1},
		{StateTTL: -1},
		{MaxCallBytes: -1},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

// TestRedisStoreTwoStores: two stores (two processes, say) on one prefix
// race on one partition; the claim's compare-and-set holds between them.
func TestRedisStoreTwoStores(t *testing.T) {
	client, prefix := persist.RedisTestClient(t)
	cfg := persist.DefaultRedisStoreConfig()
	cfg.KeyPrefix = prefix
	s1, _ := persist.NewRedisStore(client, cfg)
	s2, _ := persist.NewRedisStore(client, cfg)
	raceTwoStores(t, s1, s2)
}

func newFileStore(t *testing.T, dir string) *persist.FileStore {
	t.Helper()
	s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: dir, ClaimTTL: persisttest.ClaimTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestFileStore(t *testing.T) {
	persisttest.TestCheckpointStore(t, func(t *testing.T) persist.CheckpointStore {
		return newFileStore(t, t.TempDir())
	})
}

// TestFileStoreCompacting runs the suite with compaction after every
// commit.
func TestFileStoreCompacting(t *testing.T) {
	persisttest.TestCheckpointStore(t, func(t *testing.T) persist.CheckpointStore {
		s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: t.TempDir(), ClaimTTL: persisttest.ClaimTTL, CompactMinBytes: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestFileStoreTwoStores(t *testing.T) {
	dir := t.TempDir()
	raceTwoStores(t, newFileStore(t, dir), newFileStore(t, dir))
}

// raceTwoStores has two owners, each on its own store, race to claim and
// commit partitions: per partition exactly one claim and one commit win,
// and the partition holds the winner's checkpoint.
func raceTwoStores(t *testing.T, s1, s2 persist.CheckpointStore) {
	ctx := context.Background()
	stores := []persist.CheckpointStore{s1, s2}
	for p := int32(0); p < 30; p++ {
		owners := []persist.Owner{{Node: "one", Generation: 1}, {Node: "two", Generation: 1}}
		var claimErrs, commitErrs [2]error
		done := make(chan int, 2)
		for i := range 2 {
			go func() {
				_, claimErrs[i] = stores[i].Claim(ctx, p, owners[i])
				commitErrs[i] = stores[i].Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: owners[i],
					States:  []persist.UserState{{UserID: "u", State: []byte(owners[i].Node)}},
					Offsets: map[string]int64{"t": int64(i)}}})[0]
				done <- i
			}()
		}
		<-done
		<-done
		winner := -1
		for i := range 2 {
			if claimErrs[i] == nil {
				if winner >= 0 {
					t.Fatalf("partition %d: both claims granted", p)
				}
				winner = i
				if commitErrs[i] != nil {
					t.Fatalf("partition %d: the claimant's commit: %v", p, commitErrs[i])
				}
			} else if !errors.Is(claimErrs[i], persist.ErrFenced) || !errors.Is(commitErrs[i], persist.ErrFenced) {
				t.Fatalf("partition %d: loser got %v / %v, want ErrFenced", p, claimErrs[i], commitErrs[i])
			}
		}
		if winner < 0 {
			t.Fatalf("partition %d: no claim granted", p)
		}
		for _, s := range stores {
			got, err := s.LoadStates(ctx, p, []string{"u"})
			if err != nil || string(got[0]) != owners[winner].Node {
				t.Fatalf("partition %d: state %q, %v; want %q", p, got, err, owners[winner].Node)
			}
		}
	}
}

// TestFileStoreReopenAndTornTail: a new store on the directory sees every
// committed checkpoint; a torn frame at the end of a log (a crash in the
// middle of an append) is dropped, and the log works on.
func TestFileStoreReopenAndTornTail(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := persist.Owner{Node: "n", Generation: 1}
	s := newFileStore(t, dir)
	if _, err := s.Claim(ctx, 3, o); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 3, Owner: o,
			States:  []persist.UserState{{UserID: "u", State: []byte(fmt.Sprint("v", i))}, {UserID: fmt.Sprint("w", i), State: []byte("w")}},
			Offsets: map[string]int64{"t": int64(i)}}})[0]; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	log := filepath.Join(dir, "p3", "log")
	good, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	// Every cut inside the last frame leaves the fourth checkpoint; a cut
	// at its end leaves the fifth.
	s2 := newFileStore(t, dir)
	states, _ := s2.LoadStates(ctx, 3, []string{"u"})
	if string(states[0]) != "v4" {
		t.Fatalf("after reopening: %q", states[0])
	}
	s2.Close()
	lastFrame := frameStarts(t, good)
	last := lastFrame[len(lastFrame)-1]
	for _, cut := range []int{last + 1, last + 7, last + 8, last + 20, len(good) - 1} {
		if err := os.WriteFile(log, good[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		s3 := newFileStore(t, dir)
		states, err := s3.LoadStates(ctx, 3, []string{"u", "w4", "w3"})
		if err != nil {
			t.Fatal(err)
		}
		if string(states[0]) != "v3" || states[1] != nil || string(states[2]) != "w" {
			t.Fatalf("cut at %d of %d: states %q", cut, len(good), states)
		}
		offs, err := s3.Claim(ctx, 3, o)
		if err != nil || offs["t"] != 3 {
			t.Fatalf("cut at %d: offsets %v, %v", cut, offs, err)
		}
		if err := s3.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 3, Owner: o, Offsets: map[string]int64{"t": 9}}})[0]; err != nil {
			t.Fatal(err)
		}
		s3.Close()
		s4 := newFileStore(t, dir)
		if offs, err := s4.Claim(ctx, 3, o); err != nil || offs["t"] != 9 {
			t.Fatalf("cut at %d, after a new commit: offsets %v, %v", cut, offs, err)
		}
		s4.Close()
	}
	// A corrupt byte inside the last frame: its CRC fails, it is dropped.
	bad := append([]byte(nil), good...)
	bad[len(bad)-3] ^= 0xff
	if err := os.WriteFile(log, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	s5 := newFileStore(t, dir)
	if offs, err := s5.Claim(ctx, 3, o); err != nil || offs["t"] != 3 {
		t.Fatalf("corrupt last frame: offsets %v, %v", offs, err)
	}
}

// frameStarts returns the offsets at which the log's frames start.
func frameStarts(t *testing.T, b []byte) []int {
	var starts []int
	for off := 0; off < len(b); {
		starts = append(starts, off)
		n := int(b[off]) | int(b[off+1])<<8 | int(b[off+2])<<16 | int(b[off+3])<<24
		off += 8 + n
	}
	return starts
}

// TestFileStoreCompactionSeenByOtherStore: one store compacts the log
// while another has it open; the other notices and rereads.
func TestFileStoreCompactionSeenByOtherStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := persist.Owner{Node: "n", Generation: 1}
	compacting, err := persist.NewFileStore(persist.FileStoreConfig{Dir: dir, CompactMinBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer compacting.Close()
	reader := newFileStore(t, dir)
	if _, err := compacting.Claim(ctx, 0, o); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := compacting.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 0, Owner: o,
			States: []persist.UserState{{UserID: "u", State: []byte(fmt.Sprintf("v%d %0500d", i, 0))}}}})[0]; err != nil {
			t.Fatal(err)
		}
		got, err := reader.LoadStates(ctx, 0, []string{"u"})
		if err != nil || string(got[0]) != fmt.Sprintf("v%d %0500d", i, 0) {
			t.Fatalf("commit %d: reader sees %q, %v", i, got, err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, "p0", "log"))
	if err != nil {
		t.Fatal(err)
	}
	// 50 commits of 500 B were written; compaction keeps the last one
	// (it runs once the log is over twice the live bytes plus 4 KiB).
	if st.Size() > 2*510+4096+600 {
		t.Fatalf("log of one 500 B state is %d bytes: not compacted", st.Size())
	}
}

func TestFileStoreConfigValidate(t *testing.T) {
	if (persist.FileStoreConfig{}).Validate() == nil {
		t.Error("empty Dir validated")
	}
	if (persist.FileStoreConfig{Dir: "x", ClaimTTL: -1}).Validate() == nil {
		t.Error("negative ClaimTTL validated")
	}
	if err := (persist.FileStoreConfig{Dir: "x"}).Validate(); err != nil {
		t.Error(err)
	}
}
