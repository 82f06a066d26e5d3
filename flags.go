package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/ingest"
)

// kafkaFlags are the Kafka flags every command shares.
type kafkaFlags struct {
	KafkaBrokers      []string `help:"Comma-separated Kafka seed brokers. Empty: serve starts an embedded broker; other commands connect to it at --embedded-kafka-addr." sep:","`
	EmbeddedKafkaAddr string   `help:"Where the embedded broker listens (serve), or is found (other commands)." default:"127.0.0.1:9092"`
	Partitions        int32    `help:"Partitions of the topics lookback creates." default:"12"`
	TopicImpressions  string   `help:"Impressions topic (JSON)." default:"ad_impressions"`
	TopicBids         string   `help:"Bid requests topic (Avro)." default:"bid_requests"`
	TopicClicks       string   `help:"Clicks topic (CSV rows)." default:"clicks"`
	TopicConversions  string   `help:"Conversions topic (CSV rows)." default:"conversions"`
	TopicDeadLetter   string   `help:"Dead-letter topic." default:"lookback.deadletter"`
	BidSchemaIDs      []int32  `help:"Schema ids accepted for bid requests in the Confluent wire format (plain Avro is always accepted)." default:"1" sep:","`
}

func (k *kafkaFlags) topics() ingest.Topics {
	return ingest.Topics{
		Impressions: k.TopicImpressions, Bids: k.TopicBids, Clicks: k.TopicClicks,
		Conversions: k.TopicConversions, DeadLetter: k.TopicDeadLetter,
	}
}

// brokers returns the seed brokers for a command that does not run the
// embedded broker itself.
func (k *kafkaFlags) brokers() []string {
	if len(k.KafkaBrokers) > 0 {
		return k.KafkaBrokers
	}
	return []string{k.EmbeddedKafkaAddr}
}

// rulesFlags are the attribution rules.
type rulesFlags struct {
	Models            string        `help:"Comma-separated attribution models: last_touch, first_touch, linear, time_decay, position_based." default:"last_touch"`
	ClickWindow       time.Duration `help:"Click lookback window." default:"168h"`
	ViewWindow        time.Duration `help:"View (impression) lookback window." default:"24h"`
	CampaignWindows   string        `help:"Per-campaign windows, comma-separated campaign=click/view (either may be empty for the global one), e.g. 'ca-1=72h/12h,ca-2=/6h'."`
	HalfLife          time.Duration `help:"time_decay half life." default:"168h"`
	MaxTouchesPerUser int           `help:"Touches kept per user; the oldest are evicted first." default:"200"`
}

func (r *rulesFlags) rules() (*attribution.Rules, error) {
	cfg := attribution.DefaultConfig()
	models, err := attribution.ParseModels(r.Models)
	if err != nil {
		return nil, err
	}
	cfg.Models = models
	cfg.Windows = attribution.Windows{Click: r.ClickWindow, View: r.ViewWindow}
	cfg.HalfLife = r.HalfLife
	cfg.MaxTouchesPerUser = r.MaxTouchesPerUser
	if cfg.CampaignWindows, err = parseCampaignWindows(r.CampaignWindows); err != nil {
		return nil, err
	}
	return attribution.NewRules(cfg)
}

func parseCampaignWindows(s string) (map[string]attribution.Windows, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]attribution.Windows{}
	for _, entry := range strings.Split(s, ",") {
		camp, spec, ok := strings.Cut(strings.TrimSpace(entry), "=")
		click, view, ok2 := strings.Cut(spec, "/")
		if !ok || !ok2 || camp == "" {
			return nil, fmt.Errorf("campaign window %q: want campaign=click/view", entry)
		}
		var w attribution.Windows
		var err error
		if click != "" {
			if w.Click, err = time.ParseDuration(click); err != nil {
				return nil, fmt.Errorf("campaign window %q: click: %w", entry, err)
			}
		}
		if view != "" {
			if w.View, err = time.ParseDuration(view); err != nil {
				return nil, fmt.Errorf("campaign window %q: view: %w", entry, err)
			}
		}
		out[camp] = w
	}
	return out, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "lookback"
	}
	return h
}
