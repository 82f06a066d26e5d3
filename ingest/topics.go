package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EnsureTopics creates the topics that are missing, with the given
// partition count, and checks that the input topics are co-partitioned
// (same partition count, which lookback depends on). It returns the input
// topics' partition count, which may differ from partitions when the
// topics already existed.
func EnsureTopics(ctx context.Context, brokers []string, topics Topics, partitions int32, replication int16) (int32, error) {
	// An admin client of its own: a client's metadata is cached for 5 s
	// by default, which would hide the topics just created.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.MetadataMinAge(50*time.Millisecond))
	if err != nil {
		return 0, fmt.Errorf("connecting to Kafka: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var details kadm.TopicDetails
	// A broker that just started may not answer metadata at once.
	err = retry(ctx, 10, 200*time.Millisecond, func() error {
		var err error
		details, err = adm.ListTopics(ctx, topics.All()...)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("listing topics: %w", err)
	}
	var missing []string
	for _, name := range topics.All() {
		if d, ok := details[name]; !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		resp, err := adm.CreateTopics(ctx, partitions, replication, nil, missing...)
		if err != nil {
			return 0, fmt.Errorf("creating topics %v: %w", missing, err)
		}
		for _, r := range resp.Sorted() {
			if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
				return 0, fmt.Errorf("creating topic %s: %w", r.Topic, r.Err)
			}
		}
		// New topics take a moment to show in metadata.
		err = retry(ctx, 20, 50*time.Millisecond, func() error {
			var err error
			if details, err = adm.ListTopics(ctx, topics.All()...); err != nil {
				return err
			}
			for _, name := range topics.All() {
				if d, ok := details[name]; !ok || d.Err != nil {
					return fmt.Errorf("topic %s not visible yet", name)
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("waiting for the created topics: %w", err)
		}
	}
	var count int32 = -1
	for _, name := range topics.Inputs() {
		d, ok := details[name]
		if !ok || d.Err != nil {
			return 0, fmt.Errorf("topic %s: not available after creation: %v", name, d.Err)
		}
		n := int32(len(d.Partitions))
		if count >= 0 && n != count {
			return 0, fmt.Errorf("input topics are not co-partitioned: %s has %d partitions, others %d", name, n, count)
		}
		count = n
	}
	return count, nil
}

// retry calls fn until it succeeds, up to attempts times, doubling the
// pause between attempts.
func retry(ctx context.Context, attempts int, pause time.Duration, fn func() error) error {
	var err error
	for i := 0; i < attempts; i++ {
		if err = fn(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
	return err
}
