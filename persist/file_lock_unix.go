//go:build unix

package persist

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockFile takes an exclusive flock on f, waiting until ctx is done. flock
// locks belong to the open file description, so two opens of one path
// exclude each other even within one process.
func lockFile(ctx context.Context, f *os.File) error {
	wait := 100 * time.Microsecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

func unlockFile(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
