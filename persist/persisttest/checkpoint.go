package persisttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/persist"
)

// ClaimTTL is the claim TTL of the stores that TestCheckpointStore tests:
// newStore must build them with it.
const ClaimTTL = 500 * time.Millisecond

// TestCheckpointStore is the checkpoint store conformance suite. newStore
// returns a new store on a new, empty backing (its own key prefix or
// directory) whose claim TTL is ClaimTTL; the test's cleanup closes it.
func TestCheckpointStore(t *testing.T, newStore func(t *testing.T) persist.CheckpointStore) {
	ctx := context.Background()
	a := persist.Owner{Node: "node-a/1", Generation: 5}
	b := persist.Owner{Node: "node-b/1", Generation: 6}

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		offs := claim(t, s, 0, a)
		if len(offs) != 0 {
			t.Fatalf("first claim returned offsets %v, want none", offs)
		}
		states := []persist.UserState{
			{UserID: "u1", State: []byte("state one")},
			{UserID: "u2", State: []byte{0, 1, 2, 0xff, '\n', 0}},
			{UserID: "ü ser {3}", State: bytes.Repeat([]byte("x"), 4096)},
			{UserID: "u4", State: []byte{}},
		}
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 0, Owner: a, States: states,
			Offsets: map[string]int64{"clicks": 10, "conversions": 0}})
		expectStates(t, s, 0, map[string][]byte{
			"u1": []byte("state one"), "u2": {0, 1, 2, 0xff, '\n', 0}, "ü ser {3}": bytes.Repeat([]byte("x"), 4096),
			"u4": {}, "absent": nil, "": nil,
		})
		// The same owner re-claims and gets the offsets.
		expectOffsets(t, claim(t, s, 0, a), map[string]int64{"clicks": 10, "conversions": 0})
		// LoadStates of no users.
		got, err := s.LoadStates(ctx, 0, nil)
		if err != nil || len(got) != 0 {
			t.Fatalf("LoadStates of no users = %v, %v; want empty, nil", got, err)
		}
	})

	t.Run("OffsetsPerTopic", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		claim(t, s, 1, a)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 1, Owner: a, Offsets: map[string]int64{"a": 1, "b": 2}})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 1, Owner: a, Offsets: map[string]int64{"a": 5}})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 1, Owner: a, Offsets: map[string]int64{"c": 1 << 40}})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 1, Owner: a}) // renews only
		// Topics not named by a commit keep their offsets.
		expectOffsets(t, claim(t, s, 1, a), map[string]int64{"a": 5, "b": 2, "c": 1 << 40})
	})

	t.Run("StateSetOverwriteDelete", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		claim(t, s, 2, a)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 2, Owner: a, States: []persist.UserState{
			{UserID: "u1", State: []byte("v1")}, {UserID: "u2", State: []byte("v1")}, {UserID: "u3", State: []byte("v1")},
		}})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 2, Owner: a, States: []persist.UserState{
			{UserID: "u1", State: []byte("v2, longer than before")},
			{UserID: "u2", State: nil},     // delete
			{UserID: "nobody", State: nil}, // delete of an absent user
			{UserID: "u3", State: []byte("first")},
			{UserID: "u3", State: []byte("last")}, // the last of a user wins
		}})
		expectStates(t, s, 2, map[string][]byte{"u1": []byte("v2, longer than before"), "u2": nil, "u3": []byte("last"), "nobody": nil})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 2, Owner: a, States: []persist.UserState{
			{UserID: "u2", State: []byte("back")}, {UserID: "u3", State: []byte("x")}, {UserID: "u3", State: nil},
		}})
		expectStates(t, s, 2, map[string][]byte{"u1": []byte("v2, longer than before"), "u2": []byte("back"), "u3": nil})
	})

	t.Run("ClaimRules", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p = 3
		claim(t, s, p, a)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a, Offsets: map[string]int64{"t": 1}})
		// A higher generation wins, and gets the offsets.
		expectOffsets(t, claim(t, s, p, b), map[string]int64{"t": 1})
		// The old owner's commit is refused.
		expectFenced(t, s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: a}})[0])
		// A lower generation is refused while the claim is fresh.
		expectClaimFenced(t, s, p, a)
		// So is another node at the same generation.
		expectClaimFenced(t, s, p, persist.Owner{Node: "node-c/1", Generation: b.Generation})
		// A new incarnation of the same node is another owner.
		expectClaimFenced(t, s, p, persist.Owner{Node: "node-b/2", Generation: b.Generation})
		// The same owner re-claims.
		claim(t, s, p, b)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: b, Offsets: map[string]int64{"t": 2}})

		// Generations compare exactly, beyond float64 precision.
		big1 := persist.Owner{Node: "big-1", Generation: 1<<60 + 1}
		big0 := persist.Owner{Node: "big-0", Generation: 1 << 60}
		claim(t, s, p+100, big0)
		claim(t, s, p+100, big1)
		expectClaimFenced(t, s, p+100, big0)
		neg := persist.Owner{Node: "neg", Generation: -1}
		claim(t, s, p+200, neg)
		claim(t, s, p+200, persist.Owner{Node: "zero", Generation: 0})
		expectClaimFenced(t, s, p+200, persist.Owner{Node: "neg2", Generation: -2})

		// Once the claim is older than the TTL, a lower generation (a
		// recreated group) is granted, and the old owner is fenced.
		time.Sleep(ClaimTTL + ClaimTTL/2)
		expectOffsets(t, claim(t, s, p, a), map[string]int64{"t": 2})
		expectFenced(t, s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: b}})[0])
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a})
	})

	t.Run("CommitRenewsClaim", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p = 4
		// Timing-dependent: the check holds only if the machine did not
		// stall past the TTL; a stalled attempt is retried.
		for attempt := 0; ; attempt++ {
			claim(t, s, p, b)
			time.Sleep(ClaimTTL * 6 / 10)
			start := time.Now()
			commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: b})
			time.Sleep(ClaimTTL * 6 / 10)
			_, err := s.Claim(ctx, p, a)
			if time.Since(start) >= ClaimTTL*9/10 {
				if attempt < 3 {
					continue // b's higher generation takes the partition back
				}
				t.Skip("the machine is too slow for this timing check")
			}
			if !errors.Is(err, persist.ErrFenced) {
				t.Fatalf("claim of a lower generation %v after the commit renewed the claim: %v, want ErrFenced", time.Since(start), err)
			}
			break
		}
		time.Sleep(ClaimTTL + ClaimTTL/2)
		claim(t, s, p, a)
	})

	t.Run("StaleOwnerWritesNothing", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p = 5
		claim(t, s, p, a)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a,
			States:  []persist.UserState{{UserID: "u1", State: []byte("good")}, {UserID: "u2", State: []byte("good")}},
			Offsets: map[string]int64{"t": 100}})
		claim(t, s, p, b)
		errs := s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: a,
			States:  []persist.UserState{{UserID: "u1", State: []byte("stale")}, {UserID: "u2", State: nil}, {UserID: "u3", State: []byte("stale")}},
			Offsets: map[string]int64{"t": 200, "other": 1}}})
		expectFenced(t, errs[0])
		expectStates(t, s, p, map[string][]byte{"u1": []byte("good"), "u2": []byte("good"), "u3": nil})
		expectOffsets(t, claim(t, s, p, b), map[string]int64{"t": 100})
		// A partition never claimed refuses commits too.
		expectFenced(t, s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p + 1, Owner: a,
			States: []persist.UserState{{UserID: "u1", State: []byte("x")}}}})[0])
		expectStates(t, s, p+1, map[string][]byte{"u1": nil})
	})

	t.Run("SeveralPartitionsOneFenced", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		for p := int32(10); p < 14; p++ {
			claim(t, s, p, a)
		}
		claim(t, s, 12, b)
		var cps []persist.PartitionCheckpoint
		for p := int32(10); p < 14; p++ {
			cps = append(cps, persist.PartitionCheckpoint{Partition: p, Owner: a,
				States:  []persist.UserState{{UserID: "u", State: []byte(fmt.Sprint("state of ", p))}},
				Offsets: map[string]int64{"t": int64(p)}})
		}
		errs := s.Commit(ctx, cps)
		if len(errs) != len(cps) {
			t.Fatalf("Commit returned %d errors for %d checkpoints", len(errs), len(cps))
		}
		for i, err := range errs {
			p := cps[i].Partition
			if p == 12 {
				expectFenced(t, err)
				expectStates(t, s, p, map[string][]byte{"u": nil})
				expectOffsets(t, claim(t, s, p, b), map[string]int64{})
				continue
			}
			if err != nil {
				t.Fatalf("partition %d: %v", p, err)
			}
			expectStates(t, s, p, map[string][]byte{"u": []byte(fmt.Sprint("state of ", p))})
			expectOffsets(t, claim(t, s, p, a), map[string]int64{"t": int64(p)})
		}
		if errs := s.Commit(ctx, nil); len(errs) != 0 {
			t.Fatalf("Commit of nothing returned %v", errs)
		}
	})

	t.Run("PartitionsIsolated", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		claim(t, s, 20, a)
		claim(t, s, 21, a)
		commitOK(t, s,
			persist.PartitionCheckpoint{Partition: 20, Owner: a, States: []persist.UserState{{UserID: "u", State: []byte("twenty")}}, Offsets: map[string]int64{"t": 20}},
			persist.PartitionCheckpoint{Partition: 21, Owner: a, States: []persist.UserState{{UserID: "u", State: []byte("twenty-one")}}, Offsets: map[string]int64{"t": 21}},
		)
		claim(t, s, 21, b) // taking 21 leaves 20 alone
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 20, Owner: a, States: []persist.UserState{{UserID: "v", State: []byte("v")}}})
		commitOK(t, s, persist.PartitionCheckpoint{Partition: 21, Owner: b, States: []persist.UserState{{UserID: "u", State: nil}}})
		expectStates(t, s, 20, map[string][]byte{"u": []byte("twenty"), "v": []byte("v")})
		expectStates(t, s, 21, map[string][]byte{"u": nil, "v": nil})
		expectStates(t, s, 22, map[string][]byte{"u": nil})
		expectOffsets(t, claim(t, s, 20, a), map[string]int64{"t": 20})
		expectOffsets(t, claim(t, s, 21, b), map[string]int64{"t": 21})
		expectOffsets(t, claim(t, s, 22, a), map[string]int64{})
	})

	t.Run("RacingClaimsAndCommits", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		for round := 0; round < 20; round++ {
			p := int32(100 + round)
			owners := []persist.Owner{{Node: "racer-a", Generation: 7}, {Node: "racer-b", Generation: 7}}
			// Two owners of the same generation race to claim: one wins.
			var claimErrs [2]error
			parallel(2, func(i int) { _, claimErrs[i] = s.Claim(ctx, p, owners[i]) })
			winner := -1
			for i, err := range claimErrs {
				switch {
				case err == nil:
					if winner >= 0 {
						t.Fatalf("round %d: both claims granted", round)
					}
					winner = i
				case !errors.Is(err, persist.ErrFenced):
					t.Fatalf("round %d: claim: %v", round, err)
				}
			}
			if winner < 0 {
				t.Fatalf("round %d: no claim granted", round)
			}
			// Both race to commit: exactly the claimant wins, and the
			// partition holds its checkpoint and nothing of the other's.
			var commitErrs [2]error
			parallel(2, func(i int) {
				commitErrs[i] = s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: owners[i],
					States:  raceStates(owners[i].Node, 50),
					Offsets: map[string]int64{"t": int64(1000 + i)}}})[0]
			})
			for i, err := range commitErrs {
				if i == winner && err != nil {
					t.Fatalf("round %d: the claimant's commit: %v", round, err)
				}
				if i != winner {
					expectFenced(t, err)
				}
			}
			want := make(map[string][]byte)
			for _, st := range raceStates(owners[winner].Node, 50) {
				want[st.UserID] = st.State
			}
			expectStates(t, s, p, want)
			expectOffsets(t, claim(t, s, p, owners[winner]), map[string]int64{"t": int64(1000 + winner)})
		}
	})

	t.Run("CommitsRacingATakeover", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p = 200
		claim(t, s, p, a)
		// a commits in a loop while b takes the partition over and
		// commits: once a is fenced it stays fenced, and the partition
		// ends with b's checkpoint.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var aErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			fenced := false
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: a,
					States:  raceStates(fmt.Sprint("a", i), 20),
					Offsets: map[string]int64{"t": int64(i)}}})[0]
				switch {
				case err == nil && fenced:
					aErr = errors.New("a commit succeeded after the owner was fenced")
					return
				case errors.Is(err, persist.ErrFenced):
					fenced = true
				case err != nil:
					aErr = err
					return
				}
			}
		}()
		time.Sleep(20 * time.Millisecond)
		claim(t, s, p, b)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: b, States: raceStates("b", 20), Offsets: map[string]int64{"t": 1 << 30}})
		time.Sleep(20 * time.Millisecond)
		close(stop)
		wg.Wait()
		if aErr != nil {
			t.Fatal(aErr)
		}
		want := make(map[string][]byte)
		for _, st := range raceStates("b", 20) {
			want[st.UserID] = st.State
		}
		expectStates(t, s, p, want)
		expectOffsets(t, claim(t, s, p, b), map[string]int64{"t": 1 << 30})
	})

	t.Run("LargeBatch", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p, n = 30, 10000
		rng := rand.New(rand.NewPCG(1, 2))
		states := make([]persist.UserState, n)
		want := make(map[string][]byte, n)
		for i := range states {
			st := make([]byte, 300)
			for j := range st {
				st[j] = byte(rng.IntN(256))
			}
			states[i] = persist.UserState{UserID: fmt.Sprintf("user-%05d", i), State: st}
			want[states[i].UserID] = st
		}
		claim(t, s, p, a)
		start := time.Now()
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a, States: states, Offsets: map[string]int64{"t": n}})
		t.Logf("committed %d states of 300 B in %v", n, time.Since(start))
		expectStates(t, s, p, want)
		// Overwrite half, delete a quarter.
		var next []persist.UserState
		for i := 0; i < n; i += 2 {
			st := []byte(fmt.Sprint("new ", i))
			if i%4 == 0 {
				st = nil
			}
			next = append(next, persist.UserState{UserID: states[i].UserID, State: st})
			want[states[i].UserID] = st
		}
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a, States: next, Offsets: map[string]int64{"t": 2 * n}})
		expectStates(t, s, p, want)
		expectOffsets(t, claim(t, s, p, a), map[string]int64{"t": 2 * n})
		// A stale owner's large commit writes nothing either.
		claim(t, s, p, b)
		expectFenced(t, s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: p, Owner: a, States: states}})[0])
		expectStates(t, s, p, want)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		const p = 40
		claim(t, s, p, a)
		commitOK(t, s, persist.PartitionCheckpoint{Partition: p, Owner: a, States: []persist.UserState{{UserID: "u", State: []byte("kept")}}, Offsets: map[string]int64{"t": 1}})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Claim(cctx, p, b); !errors.Is(err, context.Canceled) {
			t.Errorf("Claim with a cancelled context: %v, want context.Canceled", err)
		}
		if _, err := s.LoadStates(cctx, p, []string{"u"}); !errors.Is(err, context.Canceled) {
			t.Errorf("LoadStates with a cancelled context: %v, want context.Canceled", err)
		}
		errs := s.Commit(cctx, []persist.PartitionCheckpoint{
			{Partition: p, Owner: a, States: []persist.UserState{{UserID: "u", State: []byte("lost")}}, Offsets: map[string]int64{"t": 2}},
			{Partition: p + 1, Owner: a},
		})
		for i, err := range errs {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Commit %d with a cancelled context: %v, want context.Canceled", i, err)
			}
		}
		expectStates(t, s, p, map[string][]byte{"u": []byte("kept")})
		expectOffsets(t, claim(t, s, p, a), map[string]int64{"t": 1})
	})

	t.Run("InvalidOwner", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		if _, err := s.Claim(ctx, 50, persist.Owner{}); err == nil || errors.Is(err, persist.ErrFenced) {
			t.Errorf("Claim by an owner without a node: %v, want an error other than ErrFenced", err)
		}
	})
}

// raceStates are n states tagged with who wrote them.
func raceStates(tag string, n int) []persist.UserState {
	out := make([]persist.UserState, n)
	for i := range out {
		out[i] = persist.UserState{UserID: fmt.Sprint("u", i), State: []byte(fmt.Sprint(tag, "/", i))}
	}
	return out
}

// parallel runs fn(0..n-1) at once, released together.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

func claim(t *testing.T, s persist.CheckpointStore, p int32, o persist.Owner) map[string]int64 {
	t.Helper()
	offs, err := s.Claim(context.Background(), p, o)
	if err != nil {
		t.Fatalf("Claim(%d, %+v): %v", p, o, err)
	}
	if offs == nil {
		t.Fatalf("Claim(%d, %+v) returned a nil map", p, o)
	}
	return offs
}

func expectClaimFenced(t *testing.T, s persist.CheckpointStore, p int32, o persist.Owner) {
	t.Helper()
	if _, err := s.Claim(context.Background(), p, o); !errors.Is(err, persist.ErrFenced) {
		t.Fatalf("Claim(%d, %+v): %v, want ErrFenced", p, o, err)
	}
}

func expectFenced(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, persist.ErrFenced) {
		t.Fatalf("got %v, want ErrFenced", err)
	}
}

func commitOK(t *testing.T, s persist.CheckpointStore, cps ...persist.PartitionCheckpoint) {
	t.Helper()
	errs := s.Commit(context.Background(), cps)
	if len(errs) != len(cps) {
		t.Fatalf("Commit returned %d errors for %d checkpoints", len(errs), len(cps))
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Commit of partition %d: %v", cps[i].Partition, err)
		}
	}
}

// expectStates checks the states of the users named in want (nil: none).
func expectStates(t *testing.T, s persist.CheckpointStore, p int32, want map[string][]byte) {
	t.Helper()
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	got, err := s.LoadStates(context.Background(), p, users)
	if err != nil {
		t.Fatalf("LoadStates(%d): %v", p, err)
	}
	if len(got) != len(users) {
		t.Fatalf("LoadStates(%d) returned %d states for %d users", p, len(got), len(users))
	}
	bad := 0
	for i, u := range users {
		w := want[u]
		if (got[i] == nil) != (w == nil) || !bytes.Equal(got[i], w) {
			if bad++; bad <= 5 {
				t.Errorf("partition %d user %q: state %q, want %q", p, u, trim(got[i]), trim(w))
			}
		}
	}
	if bad > 0 {
		t.FailNow()
	}
}

func trim(b []byte) []byte {
	if b == nil {
		return []byte("<nil>")
	}
	if len(b) > 40 {
		return append(b[:40:40], "..."...)
	}
	return b
}

func expectOffsets(t *testing.T, got, want map[string]int64) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Fatalf("offsets %v, want %v", got, want)
	}
}
