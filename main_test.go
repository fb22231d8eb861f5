package conduit_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine outlives the tests: every
// projector, listener and notifier must stop when its owner says so.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
