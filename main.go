// Command lookback is a real-time ad attribution engine: see README.md.
//
// main parses the command line (every flag also reads LOOKBACK_<FLAG>),
// builds each component from its Config, runs them as a group and waits.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/alecthomas/kong"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

type cli struct {
	LogLevel  string `help:"Log level: debug, info, warn, error." default:"info" enum:"debug,info,warn,error"`
	LogFormat string `help:"Log format: text or json." default:"text" enum:"text,json"`

	Serve     serveCmd     `cmd:"" help:"Run a lookback node (with no flags: a complete single node on embedded defaults)."`
	IngestCSV ingestCSVCmd `cmd:"" name:"ingest-csv" help:"Produce the clicks or conversions of CSV files to Kafka."`
	Migrate   migrateCmd   `cmd:"" help:"Create or upgrade the warehouse tables (safe to run twice)."`
	Broker    brokerCmd    `cmd:"" help:"Run only the embedded Kafka-protocol broker (development and tests)."`
	Loadtest  loadtestCmd  `cmd:"" help:"Generate traffic with a known answer, then verify lookback's facts and measure it."`
	Version   versionCmd   `cmd:"" help:"Print the version."`
}

func (c *cli) logger() *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

type versionCmd struct{}

func (versionCmd) Run() error {
	v := version
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	fmt.Println("lookback", v)
	return nil
}

func main() {
	var c cli
	kctx := kong.Parse(&c,
		kong.Name("lookback"),
		kong.Description("A real-time ad attribution engine."),
		kong.DefaultEnvars("LOOKBACK"),
		kong.UsageOnError(),
	)
	if err := kctx.Run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "lookback:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for rows rejected by ingest-csv (the work was done, with
// rejects), 1 for failures.
func exitCode(err error) int {
	if errors.As(err, new(rejectedRowsError)) {
		return 2
	}
	return 1
}
