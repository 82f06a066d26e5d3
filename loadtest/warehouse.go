package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lookback-dev/lookback/persist"
)

// WarehouseConfig says where the engine writes its facts: a SQL warehouse
// or the file sink of `lookback serve`'s embedded default. Exactly one is
// set.
type WarehouseConfig struct {
	// DSN is a postgres:// or redshift:// warehouse (see
	// persist.ParseWarehouseDSN).
	DSN string
	// FactsDir is a persist.FileSink directory (serve's
	// <data-dir>/facts).
	FactsDir string
}

// Validate reports the first problem with the configuration.
func (c *WarehouseConfig) Validate() error {
	switch {
	case c.DSN != "" && c.FactsDir != "":
		return errors.New("a warehouse DSN and a facts directory are both set: want one")
	case c.DSN == "" && c.FactsDir == "":
		return errors.New("no warehouse DSN and no facts directory")
	case c.DSN != "":
		if _, _, err := persist.ParseWarehouseDSN(c.DSN); err != nil {
			return err
		}
	}
	return nil
}

// Warehouse reads back what the engine wrote.
type Warehouse interface {
	persist.SnapshotReader
	// Name describes the warehouse for reports.
	Name() string
	Close() error
}

// OpenWarehouse connects to the warehouse of cfg. It never writes to it.
func OpenWarehouse(ctx context.Context, cfg WarehouseConfig) (Warehouse, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.FactsDir != "" {
		return &factsDir{dir: cfg.FactsDir}, nil
	}
	scfg := persist.DefaultSinkConfig()
	scfg.MaxConns = 2
	sink, err := persist.OpenSink(ctx, cfg.DSN, scfg)
	if err != nil {
		return nil, err
	}
	return &sqlWarehouse{sink}, nil
}

type sqlWarehouse struct{ persist.WarehouseSink }

func (w *sqlWarehouse) Name() string { return w.Dialect().String() + " warehouse" }

// factsDir reads a FileSink directory while the engine may be writing it.
// Opening the directory with persist.NewFileSink would lock it (so a
// running serve would refuse it, and a serve starting meanwhile would
// fail) and compact it in place: so each Snapshot copies the committed
// part of the files to a temporary directory and opens a FileSink there,
// which reads them with the sink's own rules (last row of a key wins).
type factsDir struct{ dir string }

func (d *factsDir) Name() string { return "facts directory " + d.dir }

func (d *factsDir) Close() error { return nil }

// The FileSink's files (see persist.FileSink): one NDJSON file per table
// and the committed sizes.
var factFiles = []string{"impressions.ndjson", "clicks.ndjson", "conversion_attributions.ndjson"}

const committedFile = "committed.json"

func (d *factsDir) Snapshot(ctx context.Context) (*persist.Snapshot, error) {
	if _, err := os.Stat(d.dir); err != nil {
		return nil, fmt.Errorf("reading the facts directory: %w", err)
	}
	tmp, err := os.MkdirTemp("", "lookback-loadtest-facts-")
	if err != nil {
		return nil, fmt.Errorf("copying the facts: %w", err)
	}
	defer os.RemoveAll(tmp)
	// committed.json first: the files only grow past the sizes it records
	// (a Write appends, syncs, then records), so copying those prefixes
	// gives a state some Write left.
	committed, err := os.ReadFile(filepath.Join(d.dir, committedFile))
	var sizes struct {
		Sizes map[string]int64 `json:"sizes"`
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &persist.Snapshot{}, nil // nothing written yet
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", committedFile, err)
	}
	if err := json.Unmarshal(committed, &sizes); err != nil {
		return nil, fmt.Errorf("reading %s: %w", committedFile, err)
	}
	for _, name := range factFiles {
		size, ok := sizes.Sizes[name]
		if !ok {
			size = -1
		}
		if err := copyPrefix(filepath.Join(tmp, name), filepath.Join(d.dir, name), size); err != nil {
			return nil, fmt.Errorf("copying the facts: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, committedFile), committed, 0o644); err != nil {
		return nil, fmt.Errorf("copying the facts: %w", err)
	}
	sink, err := persist.NewFileSink(persist.FileSinkConfig{Dir: tmp})
	if err != nil {
		return nil, fmt.Errorf("reading the copied facts: %w", err)
	}
	defer sink.Close()
	return sink.Snapshot(ctx)
}

// copyPrefix copies the first size bytes of src (all of it when size is
// negative; an absent src is an empty file) to a new file dst.
func copyPrefix(dst, src string, size int64) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return os.WriteFile(dst, nil, 0o644)
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var r io.Reader = in
	if size >= 0 {
		r = io.LimitReader(in, size)
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
