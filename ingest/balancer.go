package ingest

import (
	"sort"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// CopartitionedBalancer returns lookback's group balancer: cooperative and
// sticky like Kafka's cooperative-sticky, but it assigns partition
// *numbers*: the member that gets partition p gets partition p of every
// input topic. A partition's watermark spans its four inputs, so they must
// live on one node; the stock balancers place each topic-partition on its
// own.
//
// Each member keeps the partition numbers it owns, up to its fair share;
// the rest go to the members below their share. Moves take two rounds, as
// cooperative rebalancing requires: the old owner revokes, then the new one
// is assigned.
func CopartitionedBalancer() kgo.GroupBalancer { return copartitioned{} }

type copartitioned struct{}

func (copartitioned) ProtocolName() string { return "lookback-copartitioned" }
func (copartitioned) IsCooperative() bool  { return true }

func (copartitioned) JoinGroupMetadata(interests []string, current map[string][]int32, generation int32) []byte {
	meta := kmsg.NewConsumerMemberMetadata()
	meta.Version = 3
	meta.Topics = interests
	meta.Generation = generation
	for topic, partitions := range current {
		owned := kmsg.NewConsumerMemberMetadataOwnedPartition()
		owned.Topic = topic
		owned.Partitions = partitions
		meta.OwnedPartitions = append(meta.OwnedPartitions, owned)
	}
	sort.Slice(meta.OwnedPartitions, func(i, j int) bool {
		return meta.OwnedPartitions[i].Topic < meta.OwnedPartitions[j].Topic
	})
	return meta.AppendTo(nil)
}

func (copartitioned) ParseSyncAssignment(assignment []byte) (map[string][]int32, error) {
	return kgo.ParseConsumerSyncAssignment(assignment)
}

func (b copartitioned) MemberBalancer(members []kmsg.JoinGroupResponseMember) (kgo.GroupMemberBalancer, map[string]struct{}, error) {
	cb, err := kgo.NewConsumerBalancer(b, members)
	if err != nil {
		return nil, nil, err
	}
	return cb, cb.MemberTopics(), nil
}

func (copartitioned) Balance(cb *kgo.ConsumerBalancer, topics map[string]int32) kgo.IntoSyncAssignment {
	type member struct {
		m      *kmsg.JoinGroupResponseMember
		topics []string
		owned  []int32 // partition numbers it claims
		gen    int32
		quota  int
		units  []int32
	}
	var n int32
	for _, count := range topics {
		n = max(n, count)
	}
	var members []*member
	cb.EachMember(func(m *kmsg.JoinGroupResponseMember, meta *kmsg.ConsumerMemberMetadata) {
		mb := &member{m: m, topics: meta.Topics, gen: meta.Generation}
		seen := map[int32]bool{}
		for _, o := range meta.OwnedPartitions {
			for _, p := range o.Partitions {
				if !seen[p] && p < n {
					seen[p] = true
					mb.owned = append(mb.owned, p)
				}
			}
		}
		sort.Slice(mb.owned, func(i, j int) bool { return mb.owned[i] < mb.owned[j] })
		members = append(members, mb)
	})
	plan := cb.NewPlan()
	// Only a member that reads every topic can own a partition number:
	// one that reads fewer (during a rolling change of topic names) would
	// leave the partitions of the topics it skips to nobody. When no member
	// reads them all, every member takes what it reads.
	full := members[:0:0]
	for _, mb := range members {
		if readsAll(mb.topics, topics) {
			full = append(full, mb)
		}
	}
	if len(full) > 0 {
		members = full
	}
	if len(members) == 0 || n == 0 {
		return plan
	}

	// A partition claimed by several members (one missed a rebalance)
	// belongs to the claim of the highest generation.
	owner := make([]*member, n)
	for _, mb := range members {
		for _, p := range mb.owned {
			if cur := owner[p]; cur == nil || mb.gen > cur.gen {
				owner[p] = mb
			}
		}
	}

	// Quotas: everyone gets n/len; the remainder goes to the members that
	// already own the most, which moves the fewest partitions.
	byOwned := append([]*member(nil), members...)
	sort.SliceStable(byOwned, func(i, j int) bool { return len(byOwned[i].owned) > len(byOwned[j].owned) })
	base, extra := int(n)/len(members), int(n)%len(members)
	for i, mb := range byOwned {
		mb.quota = base
		if i < extra {
			mb.quota++
		}
	}

	// Keep what each member rightfully owns, up to its quota.
	var free []int32
	for p := int32(0); p < n; p++ {
		if mb := owner[p]; mb != nil && len(mb.units) < mb.quota {
			mb.units = append(mb.units, p)
		} else {
			free = append(free, p)
		}
	}
	// Hand out the rest to the members below their quota.
	for _, mb := range members {
		for len(mb.units) < mb.quota && len(free) > 0 {
			mb.units = append(mb.units, free[0])
			free = free[1:]
		}
	}

	for _, mb := range members {
		for _, topic := range mb.topics {
			count, ok := topics[topic]
			if !ok {
				continue
			}
			var parts []int32
			for _, p := range mb.units {
				if p < count {
					parts = append(parts, p)
				}
			}
			if len(parts) > 0 {
				plan.AddPartitions(mb.m, topic, parts)
			}
		}
	}
	plan.AdjustCooperative(cb)
	return plan
}

func readsAll(subscribed []string, topics map[string]int32) bool {
	for topic := range topics {
		found := false
		for _, s := range subscribed {
			if s == topic {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
