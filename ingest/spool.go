package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lookback-dev/lookback/attribution"
)

// Spool watches a directory for CSV batch files: each new file is
// ingested, then moved to done/ when every row went through, or to failed/
// when some rows were rejected (with a <name>.rejects file listing their
// line numbers and reasons; the rows are in the dead-letter topic too). A
// file moves only once Kafka has acknowledged all its good rows; when Kafka
// does not, the file stays and is tried again (dedupe makes the re-sent
// rows harmless). A file is picked up once its size and modification time
// have not changed for one scan, so a file still being written is left
// alone; writing elsewhere and renaming into the directory is best.
type Spool struct {
	dir      string
	loader   *CSVLoader
	log      *slog.Logger
	interval time.Duration
	seen     map[string]fileStamp
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// NewSpool returns a spool of dir.
func NewSpool(dir string, prod *Producer, dlq *DeadLetterWriter, maxFutureSkew time.Duration, log *slog.Logger) *Spool {
	return &Spool{
		dir:      dir,
		loader:   &CSVLoader{Producer: prod, DeadLetters: dlq, MaxFutureSkew: maxFutureSkew},
		log:      log.With("component", "spool", "dir", dir),
		interval: time.Second,
		seen:     map[string]fileStamp{},
	}
}

// Run scans the directory until ctx ends.
func (s *Spool) Run(ctx context.Context) error {
	for _, d := range []string{s.dir, filepath.Join(s.dir, "done"), filepath.Join(s.dir, "failed")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating the spool directory: %w", err)
		}
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		if err := s.scan(ctx); err != nil {
			s.log.Warn("scanning the spool directory failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Spool) scan(ctx context.Context) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	present := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") {
			continue
		}
		present[name] = true
		info, err := e.Info()
		if err != nil {
			continue
		}
		stamp := fileStamp{info.Size(), info.ModTime()}
		if prev, ok := s.seen[name]; !ok || prev != stamp {
			s.seen[name] = stamp // changed since the last scan: wait for it to settle
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		s.ingest(ctx, name)
		delete(s.seen, name)
	}
	for name := range s.seen {
		if !present[name] {
			delete(s.seen, name)
		}
	}
	return nil
}

func (s *Spool) ingest(ctx context.Context, name string) {
	path := filepath.Join(s.dir, name)
	f, err := os.Open(path)
	if err != nil {
		s.log.Warn("opening a spool file failed", "file", name, "err", err)
		return
	}
	sum, err := s.loader.Load(ctx, f, name, attribution.TypeNone)
	f.Close()
	var note string
	switch {
	case err != nil && sum.Rows == 0 && !errors.Is(err, context.Canceled) && sum.Failed == 0:
		// The header is unusable: no row can go through.
		note = err.Error() + "\n"
	case err != nil:
		s.log.Warn("spool file not fully acknowledged; will retry", "file", name, "err", err)
		return
	}
	dest := "done"
	if note != "" || sum.Rejected > 0 {
		dest = "failed"
		var b strings.Builder
		b.WriteString(note)
		for _, r := range sum.Rejects {
			fmt.Fprintf(&b, "line %d: %v\n", r.Line, r.Err)
		}
		if err := os.WriteFile(filepath.Join(s.dir, dest, name+".rejects"), []byte(b.String()), 0o644); err != nil {
			s.log.Warn("writing the rejects file failed", "file", name, "err", err)
		}
	}
	if err := os.Rename(path, filepath.Join(s.dir, dest, name)); err != nil {
		s.log.Warn("moving a spool file failed", "file", name, "err", err)
		return
	}
	s.log.Info("spool file ingested", "file", name, "rows", sum.Rows, "produced", sum.Produced, "rejected", sum.Rejected, "moved_to", dest)
}
