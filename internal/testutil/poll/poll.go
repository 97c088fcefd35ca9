// Package poll is the one way tests wait for something that happens
// asynchronously: a reconcile, a flush, a process becoming ready.
package poll

import (
	"errors"
	"testing"
	"time"
)

// Interval is how often Until asks again.
const Interval = 50 * time.Millisecond

// Until calls cond every Interval until it returns nil, and fails t with
// cond's last error if that has not happened within timeout or when the test
// ends first.
func Until(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %s: %v", timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting: %v", err)
		case <-time.After(Interval):
		}
	}
}

// Check is nil when ok, else an error saying why: for conditions written as a
// test and its explanation.
func Check(ok bool, why string) error {
	if ok {
		return nil
	}
	return errors.New(why)
}
