package persist_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lookback-dev/lookback/attribution"
	"github.com/lookback-dev/lookback/persist"
)

// The crash tests run a child process (this test binary, in the mode named
// by crashModeEnv) that commits in a loop and prints the number of each
// acknowledged commit; the parent kills it with SIGKILL at some instant and
// checks what a new store or sink finds: one whole commit, at least the
// last acknowledged one, never part of one.
const (
	crashModeEnv = "LOOKBACK_PERSIST_CRASH_CHILD"
	crashDirEnv  = "LOOKBACK_PERSIST_CRASH_DIR"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(crashModeEnv); mode != "" {
		if err := crashChild(mode, os.Getenv(crashDirEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const crashUsers = 200

func crashChild(mode, dir string) error {
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	switch mode {
	case "store":
		// Compaction after most commits, so that kills land in it too.
		s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: dir, CompactMinBytes: 1 << 16})
		if err != nil {
			return err
		}
		o := persist.Owner{Node: "child", Generation: 1}
		if _, err := s.Claim(ctx, 0, o); err != nil {
			return err
		}
		for i := 1; ; i++ {
			states := make([]persist.UserState, crashUsers)
			for u := range states {
				// Lengths vary with i, so a torn frame is not a copy of the last.
				states[u] = persist.UserState{UserID: "u" + strconv.Itoa(u), State: []byte(strings.Repeat(strconv.Itoa(i)+",", 1+i%40))}
			}
			if err := s.Commit(ctx, []persist.PartitionCheckpoint{{Partition: 0, Owner: o, States: states,
				Offsets: map[string]int64{"t": int64(i)}}})[0]; err != nil {
				return err
			}
			fmt.Fprintln(out, i)
			out.Flush()
		}
	case "sink":
		s, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir})
		if err != nil {
			return err
		}
		for i := 1; ; i++ {
			if err := s.Write(ctx, crashFacts(i)); err != nil {
				return err
			}
			fmt.Fprintln(out, i)
			out.Flush()
		}
	}
	return fmt.Errorf("unknown crash mode %q", mode)
}

// crashFacts is batch i: every impression rewritten (website v<i>), one new
// click per batch, and conversion c rewritten with i touches.
func crashFacts(i int) *attribution.Facts {
	f := &attribution.Facts{}
	for u := 0; u < crashUsers; u++ {
		f.Impressions = append(f.Impressions, attribution.ImpressionFact{ImpressionID: "imp" + strconv.Itoa(u),
			UserID: "u", Time: attribution.MinEventTime, Website: "v" + strconv.Itoa(i)})
	}
	f.Clicks = []attribution.ClickFact{{ClickID: "clk" + strconv.Itoa(i), UserID: "u", Time: attribution.MinEventTime}}
	c := attribution.ConversionFact{UserID: "u", Conversion: attribution.Conversion{ID: "c", Time: attribution.MinEventTime, Value: float64(i)},
		Models: []attribution.Model{attribution.Linear}}
	for k := 0; k < 1+i%5; k++ {
		c.Path = append(c.Path, attribution.PathTouch{Type: attribution.TypeClick, ID: "k" + strconv.Itoa(k), Time: attribution.MinEventTime})
		c.Credits = append(c.Credits, 1/float64(1+i%5))
	}
	f.Conversions = []attribution.ConversionFact{c}
	return f
}

// runAndKill starts the child, lets it run for d, kills it, and returns
// its last acknowledged commit.
func runAndKill(t *testing.T, mode, dir string, d time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashModeEnv+"="+mode, crashDirEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make(chan int, 1<<16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, err := strconv.Atoi(sc.Text()); err == nil {
				acked <- n
			}
		}
		close(acked)
	}()
	// Wait for the first ack, then run d more.
	last := 0
	select {
	case n, ok := <-acked:
		if !ok {
			cmd.Wait()
			t.Fatalf("child exited before its first commit: %s", stderr.String())
		}
		last = n
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("child made no commit in 30s")
	}
	time.Sleep(d)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for n := range acked {
		last = n
	}
	cmd.Wait()
	return last
}

func TestFileStoreSurvivesKill(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	users := make([]string, crashUsers)
	for u := range users {
		users[u] = "u" + strconv.Itoa(u)
	}
	for round, d := range []time.Duration{3 * time.Millisecond, 17 * time.Millisecond, 40 * time.Millisecond, 90 * time.Millisecond, 150 * time.Millisecond} {
		acked := runAndKill(t, "store", dir, d)
		s, err := persist.NewFileStore(persist.FileStoreConfig{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		// The child re-claims as the same owner each round.
		offs, err := s.Claim(ctx, 0, persist.Owner{Node: "child", Generation: 1})
		if err != nil {
			t.Fatal(err)
		}
		got := int(offs["t"])
		if got < acked {
			t.Fatalf("round %d: offsets at commit %d, but commit %d was acknowledged", round, got, acked)
		}
		states, err := s.LoadStates(ctx, 0, users)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Repeat(strconv.Itoa(got)+",", 1+got%40)
		for u, st := range states {
			if string(st) != want {
				t.Fatalf("round %d: user %d has %.40q, want the state of commit %d (%.40q)", round, u, st, got, want)
			}
		}
		s.Close()
		t.Logf("round %d: killed after %v; commit %d acknowledged, %d found", round, d, acked, got)
	}
}

func TestFileSinkSurvivesKill(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for round, d := range []time.Duration{3 * time.Millisecond, 17 * time.Millisecond, 40 * time.Millisecond, 90 * time.Millisecond} {
		acked := runAndKill(t, "sink", dir, d)
		s, err := persist.NewFileSink(persist.FileSinkConfig{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		snap, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The conversion's value says which batch was the last whole one.
		if len(snap.Attributions) == 0 {
			t.Fatalf("round %d: no conversion rows", round)
		}
		got := int(snap.Attributions[0].Value)
		if got < acked {
			t.Fatalf("round %d: batch %d found, but %d was acknowledged", round, got, acked)
		}
		// Batch got, whole: every impression at v<got>, the conversion's
		// rows from batch got only; clicks of every batch up to got (each
		// round restarts at batch 1, so earlier rounds' clicks stay too).
		for _, imp := range snap.Impressions {
			if imp.Website != "v"+strconv.Itoa(got) {
				t.Fatalf("round %d: impression %s at %s, want v%d", round, imp.ImpressionID, imp.Website, got)
			}
		}
		if len(snap.Impressions) != crashUsers {
			t.Fatalf("round %d: %d impressions", round, len(snap.Impressions))
		}
		if n := len(snap.Attributions); n != 1+got%5 {
			t.Fatalf("round %d: %d conversion rows, want %d", round, n, 1+got%5)
		}
		clicks := make(map[string]bool)
		for _, c := range snap.Clicks {
			clicks[c.ClickID] = true
		}
		for i := 1; i <= got; i++ {
			if !clicks["clk"+strconv.Itoa(i)] {
				t.Fatalf("round %d: click of batch %d missing", round, i)
			}
		}
		if clicks["clk"+strconv.Itoa(got+1)] && round == 0 {
			t.Fatalf("round %d: click of batch %d present, beyond the last whole batch", round, got+1)
		}
		s.Close()
		t.Logf("round %d: killed after %v; batch %d acknowledged, %d found", round, d, acked, got)
	}
}
