//go:build !unix

package persist

import (
	"context"
	"errors"
	"os"
)

func lockFile(ctx context.Context, f *os.File) error {
	return errors.New("file locks are not supported on this platform")
}

func unlockFile(f *os.File) {}
