package ingest_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/lookback-dev/lookback/ingest"
)

// Unit tests of the co-partitioning balancer, driven as the group leader
// drives it: member metadata from JoinGroupMetadata, MemberBalancer,
// BalanceOrError, the sync assignments parsed back.

var balTopics = ingest.DefaultTopics().Inputs()

func topicCounts(n int32) map[string]int32 {
	out := map[string]int32{}
	for _, t := range balTopics {
		out[t] = n
	}
	return out
}

// balMember is a member as the leader sees it at a join.
type balMember struct {
	id     string
	topics []string
	owned  []int32 // partition numbers it owns, of every topic it reads
	gen    int32
	// ownedRaw, if set, is the ownership claimed instead of owned.
	ownedRaw map[string][]int32
}

func (m balMember) join() kmsg.JoinGroupResponseMember {
	topics := m.topics
	if topics == nil {
		topics = balTopics[:]
	}
	owned := m.ownedRaw
	if owned == nil && len(m.owned) > 0 {
		owned = map[string][]int32{}
		for _, t := range topics {
			owned[t] = slices.Clone(m.owned)
		}
	}
	jm := kmsg.NewJoinGroupResponseMember()
	jm.MemberID = m.id
	jm.ProtocolMetadata = ingest.CopartitionedBalancer().JoinGroupMetadata(topics, owned, m.gen)
	return jm
}

// balance runs the balancer over members and returns each member's
// assignment, topic -> sorted partitions.
func balance(t testing.TB, members []balMember, counts map[string]int32) map[string]map[string][]int32 {
	t.Helper()
	b := ingest.CopartitionedBalancer()
	if b.ProtocolName() != "lookback-copartitioned" || !b.IsCooperative() {
		t.Fatalf("balancer %q, cooperative %v", b.ProtocolName(), b.IsCooperative())
	}
	joins := make([]kmsg.JoinGroupResponseMember, len(members))
	for i, m := range members {
		joins[i] = m.join()
	}
	mb, interests, err := b.MemberBalancer(joins)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		topics := m.topics
		if topics == nil {
			topics = balTopics[:]
		}
		for _, topic := range topics {
			if _, ok := interests[topic]; !ok {
				t.Fatalf("member interests %v lack %s", interests, topic)
			}
		}
	}
	be, ok := mb.(kgo.GroupMemberBalancerOrError)
	if !ok {
		t.Fatalf("member balancer %T cannot report errors", mb)
	}
	into, err := be.BalanceOrError(counts)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]int32{}
	for _, a := range into.IntoSyncAssignment() {
		parsed, err := b.ParseSyncAssignment(a.MemberAssignment)
		if err != nil {
			t.Fatalf("member %s: %v", a.MemberID, err)
		}
		for _, ps := range parsed {
			slices.Sort(ps)
		}
		out[a.MemberID] = parsed
	}
	for _, m := range members {
		if out[m.id] == nil {
			out[m.id] = map[string][]int32{}
		}
	}
	return out
}

// units checks that a member's assignment is co-partitioned (the same
// partition numbers of every input topic it got any of) and returns them.
func units(t testing.TB, member string, a map[string][]int32) []int32 {
	t.Helper()
	var parts []int32
	first := true
	for _, topic := range balTopics {
		ps := a[topic]
		if first {
			parts, first = ps, false
			continue
		}
		if !slices.Equal(ps, parts) {
			t.Errorf("member %s: %s gets %v but %s gets %v: not co-partitioned", member, topic, ps, balTopics[0], parts)
		}
	}
	for topic := range a {
		if !slices.Contains(balTopics[:], topic) {
			t.Errorf("member %s assigned topic %s", member, topic)
		}
	}
	return slices.Clone(parts)
}

// checkPlan checks that a plan is co-partitioned and assigns each partition
// number to at most one member; it returns each member's partitions.
func checkPlan(t testing.TB, plan map[string]map[string][]int32) map[string][]int32 {
	t.Helper()
	out := map[string][]int32{}
	owner := map[int32]string{}
	for id, a := range plan {
		out[id] = units(t, id, a)
		for _, p := range out[id] {
			if o, dup := owner[p]; dup {
				t.Errorf("partition %d planned for %s and %s", p, o, id)
			}
			owner[p] = id
		}
	}
	return out
}

// checkComplete checks that every partition is assigned, and that the
// counts differ by at most one.
func checkComplete(t testing.TB, got map[string][]int32, n int32) {
	t.Helper()
	var all []int32
	lo, hi := int(n)+1, -1
	for _, ps := range got {
		all = append(all, ps...)
		lo, hi = min(lo, len(ps)), max(hi, len(ps))
	}
	slices.Sort(all)
	if !slices.Equal(all, allPartitions(n)) {
		t.Errorf("partitions assigned %v, want each of 0..%d once", all, n-1)
	}
	if hi-lo > 1 {
		t.Errorf("unbalanced: %v", got)
	}
}

func TestBalancerFreshGroup(t *testing.T) {
	for _, n := range []int32{1, 5, 12, 13} {
		for members := 1; members <= 14; members++ {
			t.Run(fmt.Sprintf("%d partitions %d members", n, members), func(t *testing.T) {
				var ms []balMember
				for i := range members {
					ms = append(ms, balMember{id: fmt.Sprintf("m%02d", i), gen: -1})
				}
				got := checkPlan(t, balance(t, ms, topicCounts(n)))
				checkComplete(t, got, n)
			})
		}
	}
}

// coopRounds runs cooperative rebalancing to its end: each round, members
// join claiming what they own; they keep what the plan gives them and
// revoke the rest; while anyone revoked, another round follows. It checks
// that no round gives a member a partition another member owned at the
// join (it must be revoked first), and returns the final ownership and the
// number of rounds.
func coopRounds(t testing.TB, members []balMember, n int32) (map[string][]int32, int) {
	t.Helper()
	owned := map[string][]int32{}
	for _, m := range members {
		owned[m.id] = slices.Clone(m.owned)
	}
	gen := int32(0)
	for _, m := range members {
		gen = max(gen, m.gen)
	}
	for round := 1; round <= 4; round++ {
		gen++
		var ms []balMember
		ownerAtJoin := map[int32]string{}
		for _, m := range members {
			ms = append(ms, balMember{id: m.id, topics: m.topics, owned: owned[m.id], gen: gen - 1})
			for _, p := range owned[m.id] {
				ownerAtJoin[p] = m.id
			}
		}
		plan := checkPlan(t, balance(t, ms, topicCounts(n)))
		revoked := false
		for _, m := range members {
			for _, p := range plan[m.id] {
				if o, ok := ownerAtJoin[p]; ok && o != m.id {
					t.Errorf("round %d: partition %d given to %s while %s still owns it", round, p, m.id, o)
				}
			}
			for _, p := range owned[m.id] {
				if !slices.Contains(plan[m.id], p) {
					revoked = true
				}
			}
			owned[m.id] = plan[m.id]
		}
		if !revoked {
			return owned, round
		}
	}
	t.Fatalf("no stable assignment after 4 rounds: %v", owned)
	return nil, 0
}

// TestBalancerStickyJoin: a member joining takes partitions from the
// others, who keep the rest of theirs; the partitions it takes are revoked
// in a first round and assigned to it in a second.
func TestBalancerStickyJoin(t *testing.T) {
	a := balMember{id: "a", owned: []int32{0, 1, 2, 3, 4, 5}, gen: 7}
	b := balMember{id: "b", owned: []int32{6, 7, 8, 9, 10, 11}, gen: 7}
	c := balMember{id: "c", gen: -1}

	// The first round: a and b keep 4 of theirs; c gets nothing yet.
	plan := checkPlan(t, balance(t, []balMember{a, b, c}, topicCounts(12)))
	for _, m := range []balMember{a, b} {
		if len(plan[m.id]) != 4 {
			t.Errorf("round 1: %s keeps %v, want 4 of %v", m.id, plan[m.id], m.owned)
		}
		for _, p := range plan[m.id] {
			if !slices.Contains(m.owned, p) {
				t.Errorf("round 1: %s given partition %d it did not own (%v)", m.id, p, m.owned)
			}
		}
	}
	if len(plan["c"]) != 0 {
		t.Errorf("round 1: c given %v, which a and b still own", plan["c"])
	}

	// The second round: c gets the four revoked; nothing else moves.
	a2 := balMember{id: "a", owned: plan["a"], gen: 8}
	b2 := balMember{id: "b", owned: plan["b"], gen: 8}
	plan2 := checkPlan(t, balance(t, []balMember{a2, b2, {id: "c", gen: 8}}, topicCounts(12)))
	checkComplete(t, plan2, 12)
	if !slices.Equal(plan2["a"], plan["a"]) || !slices.Equal(plan2["b"], plan["b"]) {
		t.Errorf("round 2 moved partitions of a or b: %v then %v", plan, plan2)
	}
	if len(plan2["c"]) != 4 {
		t.Errorf("round 2: c gets %v, want 4", plan2["c"])
	}

	final, rounds := coopRounds(t, []balMember{a, b, c}, 12)
	checkComplete(t, final, 12)
	if rounds != 2 {
		t.Errorf("%d rounds to settle, want 2", rounds)
	}
}

// TestBalancerLeave: when a member leaves, the others keep theirs and get
// its partitions at once (nobody owns them: no revoke round).
func TestBalancerLeave(t *testing.T) {
	a := balMember{id: "a", owned: []int32{0, 1, 2, 3}, gen: 4}
	b := balMember{id: "b", owned: []int32{4, 5, 6, 7}, gen: 4}
	plan := checkPlan(t, balance(t, []balMember{a, b}, topicCounts(12)))
	checkComplete(t, plan, 12)
	for _, m := range []balMember{a, b} {
		for _, p := range m.owned {
			if !slices.Contains(plan[m.id], p) {
				t.Errorf("%s lost partition %d when another member left: %v", m.id, p, plan)
			}
		}
	}
}

// TestBalancerStaleClaim: a member that missed a rebalance claims
// partitions now owned by a member of a later generation; the later claim
// wins and the stale claimant is not given them in this round.
func TestBalancerStaleClaim(t *testing.T) {
	a := balMember{id: "a", owned: []int32{0, 1, 2, 3, 4, 5}, gen: 9}
	stale := balMember{id: "b", owned: []int32{4, 5, 6, 7, 8}, gen: 6}
	plan := checkPlan(t, balance(t, []balMember{a, stale}, topicCounts(12)))
	if !slices.Equal(plan["a"], a.owned) {
		t.Errorf("a (generation 9) keeps %v, want %v", plan["a"], a.owned)
	}
	for _, p := range []int32{4, 5} {
		if slices.Contains(plan["b"], p) {
			t.Errorf("b (stale, generation 6) given partition %d, which a owns", p)
		}
	}
	for _, p := range []int32{6, 7, 8} {
		if !slices.Contains(plan["b"], p) {
			t.Errorf("b lost partition %d nobody else claims: %v", p, plan["b"])
		}
	}
}

// TestBalancerPartialClaim: a member claiming a partition of only some
// topics (it revoked in between) still gets whole partition numbers.
func TestBalancerPartialClaim(t *testing.T) {
	a := balMember{id: "a", gen: 3, ownedRaw: map[string][]int32{balTopics[0]: {0, 1, 2}, balTopics[1]: {0, 1}}}
	b := balMember{id: "b", gen: 3, owned: []int32{3, 4, 5}}
	plan := checkPlan(t, balance(t, []balMember{a, b}, topicCounts(6)))
	if !slices.Equal(plan["b"], []int32{3, 4, 5}) {
		t.Errorf("b keeps %v, want 3 4 5", plan["b"])
	}
}

// TestBalancerRandomChurn: random joins and leaves; after each, the
// cooperative rounds never hand over an owned partition, settle in at most
// two rounds, leave the group balanced and complete, and move no more than
// needed: every member keeps what it owned up to its share.
func TestBalancerRandomChurn(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n = 12
	var members []balMember
	next := 0
	gen := int32(1)
	for step := range 60 {
		switch {
		case len(members) == 0 || (len(members) < 8 && r.IntN(2) == 0):
			members = append(members, balMember{id: fmt.Sprintf("m%02d", next), gen: -1})
			next++
		default:
			i := r.IntN(len(members))
			members = append(members[:i], members[i+1:]...)
		}
		sort.Slice(members, func(i, j int) bool { return members[i].id < members[j].id })
		before := map[string][]int32{}
		for i := range members {
			members[i].gen = gen
			before[members[i].id] = members[i].owned
		}
		final, rounds := coopRounds(t, members, n)
		if rounds > 2 {
			t.Errorf("step %d: %d rounds to settle", step, rounds)
		}
		checkComplete(t, final, n)
		share := n / len(members)
		for i := range members {
			m := &members[i]
			kept := 0
			for _, p := range before[m.id] {
				if slices.Contains(final[m.id], p) {
					kept++
				}
			}
			if want := min(len(before[m.id]), share); kept < want {
				t.Errorf("step %d: %s kept %d of %v (now %v), want at least %d", step, m.id, kept, before[m.id], final[m.id], want)
			}
			m.owned = final[m.id]
		}
		gen += int32(rounds)
		if t.Failed() {
			t.Fatalf("step %d: members %v", step, final)
		}
	}
}

// TestBalancerJoinGroupMetadata: the metadata a member joins with carries
// its topics, its generation and what it owns.
func TestBalancerJoinGroupMetadata(t *testing.T) {
	owned := map[string][]int32{"b": {3}, "a": {1, 2}}
	raw := ingest.CopartitionedBalancer().JoinGroupMetadata([]string{"a", "b"}, owned, 42)
	var meta kmsg.ConsumerMemberMetadata
	if err := meta.ReadFrom(raw); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(meta.Topics, []string{"a", "b"}) || meta.Generation != 42 || len(meta.OwnedPartitions) != 2 ||
		meta.OwnedPartitions[0].Topic != "a" || !slices.Equal(meta.OwnedPartitions[0].Partitions, []int32{1, 2}) ||
		meta.OwnedPartitions[1].Topic != "b" || !slices.Equal(meta.OwnedPartitions[1].Partitions, []int32{3}) {
		t.Errorf("metadata %+v", meta)
	}
}

// TestBalancerMixedSubscriptions: while members disagree on the topics
// (a rolling change of a topic name), every partition of every topic some
// member reads must still be assigned, co-partitioned among the members
// that read all the topics.
func TestBalancerMixedSubscriptions(t *testing.T) {
	a := balMember{id: "a", gen: -1}
	b := balMember{id: "b", gen: -1, topics: balTopics[:2]}
	plan := balance(t, []balMember{a, b}, topicCounts(4))
	for _, topic := range balTopics {
		var got []int32
		for _, m := range plan {
			got = append(got, m[topic]...)
		}
		slices.Sort(got)
		if !slices.Equal(got, allPartitions(4)) {
			t.Errorf("%s: partitions %v assigned, want all of 0..3 (plan %v)", topic, got, plan)
		}
	}
}
