// Package ingest owns the way events get into lookback: the four
// co-partitioned Kafka topics and their wire formats (impressions as JSON,
// bid requests as Avro, clicks and conversions as CSV rows), the consumer
// group that hands each poll to the owner of its partitions, the producers
// that key every event by user id with Kafka's default partitioner, the
// dead-letter topic for records that cannot be decoded or validated, CSV
// batch files and the spool directory, and the embedded Kafka-protocol
// broker (kfake) of the single-command default.
//
// Decoders turn one record into an attribution.Event; encoders are their
// inverse, for producers. Nothing here knows about actors or checkpoints:
// the consumer calls a Handler, which decides where offsets resume from and
// what a poll's records become.
package ingest

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lookback-dev/lookback/attribution"
)

// Topics names the topics lookback reads and writes.
type Topics struct {
	Impressions string
	Bids        string
	Clicks      string
	Conversions string
	DeadLetter  string
}

// DefaultTopics returns the topic names of the interfaces spec.
func DefaultTopics() Topics {
	return Topics{
		Impressions: "ad_impressions",
		Bids:        "bid_requests",
		Clicks:      "clicks",
		Conversions: "conversions",
		DeadLetter:  "lookback.deadletter",
	}
}

// NumInputs is the number of input topics, and so of a partition's
// watermark inputs.
const NumInputs = 4

// Inputs returns the input topics indexed by input number: the input of
// an event of type t is InputOf(t).
func (t Topics) Inputs() [NumInputs]string {
	return [NumInputs]string{t.Bids, t.Impressions, t.Clicks, t.Conversions}
}

// InputOf is the input number of events of type t (bid 0, impression 1,
// click 2, conversion 3).
func InputOf(t attribution.Type) int { return int(t) - 1 }

// Input returns the input number of topic, or -1.
func (t Topics) Input(topic string) int {
	for i, name := range t.Inputs() {
		if name == topic {
			return i
		}
	}
	return -1
}

// TopicOf returns the topic that carries events of type typ.
func (t Topics) TopicOf(typ attribution.Type) string { return t.Inputs()[InputOf(typ)] }

// All returns every topic, the dead-letter one last.
func (t Topics) All() []string {
	in := t.Inputs()
	return append(in[:], t.DeadLetter)
}

// Validate reports empty or repeated topic names.
func (t Topics) Validate() error {
	seen := map[string]bool{}
	for _, name := range t.All() {
		if strings.TrimSpace(name) == "" {
			return errors.New("topic names must not be empty")
		}
		if seen[name] {
			return fmt.Errorf("topic %q named twice", name)
		}
		seen[name] = true
	}
	return nil
}
